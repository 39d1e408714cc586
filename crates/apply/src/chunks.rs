//! Tables whose rows the source reports under other relations' names.
//!
//! A TimescaleDB hypertable holds no rows itself: they live in its chunks,
//! inheritance children named `<prefix>_<id>_chunk` in a schema of their
//! own, and logical decoding reports each change on its chunk. The target
//! has its own chunks, so a change is applied to the hypertable, which
//! routes it. TimescaleDB's other internal relations (compressed chunks,
//! the materializations of continuous aggregates) are never applied: the
//! target makes its own. Rows that TimescaleDB moves between a chunk and its
//! compressed form are marked in the stream by logical messages around the
//! move ([`MoveMarker`]); they are not the application's changes.

use pglive_postgres::QualifiedName;

/// A table whose rows the source reports on its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedTable {
    /// The table (a hypertable), as named on both sides.
    pub table: QualifiedName,
    /// The schema its chunks are created in on the source.
    pub chunk_schema: String,
    /// Its chunks are named `<prefix>_<id>_chunk`.
    pub chunk_prefix: String,
}

impl ChunkedTable {
    /// Whether `schema`.`name` names one of its chunks.
    pub fn owns(&self, schema: &str, name: &str) -> bool {
        schema == self.chunk_schema
            && name
                .strip_prefix(self.chunk_prefix.as_str())
                .and_then(|rest| rest.strip_prefix('_'))
                .and_then(|rest| rest.strip_suffix("_chunk"))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// What a source relation is to the applier.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// A table of its own name.
    Itself,
    /// A chunk of this table.
    ChunkOf(QualifiedName),
    /// An internal relation of TimescaleDB: never applied.
    Internal,
}

/// Resolves `schema`.`name` against `chunked` tables and the `internal`
/// schemas where TimescaleDB keeps chunks and its own relations.
pub(crate) fn resolve(
    chunked: &[ChunkedTable],
    internal: &[String],
    schema: &str,
    name: &str,
) -> Resolved {
    if let Some(c) = chunked.iter().find(|c| c.owns(schema, name)) {
        return Resolved::ChunkOf(c.table.clone());
    }
    if internal.iter().any(|s| s == schema) {
        return Resolved::Internal;
    }
    Resolved::Itself
}

/// TimescaleDB's logical messages around rows it moves into or out of
/// compressed chunks (`timescaledb.enable_compression_wal_markers`, on by
/// default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MoveMarker {
    /// Rows TimescaleDB moves follow.
    Start,
    /// The move ended.
    End,
}

impl MoveMarker {
    /// The marker a logical message's prefix is, if any.
    pub(crate) fn of(prefix: &str) -> Option<MoveMarker> {
        match prefix {
            "::timescaledb-compression-start" | "::timescaledb-decompression-start" => {
                Some(MoveMarker::Start)
            }
            "::timescaledb-compression-end" | "::timescaledb-decompression-end" => {
                Some(MoveMarker::End)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> ChunkedTable {
        ChunkedTable {
            table: QualifiedName::new("public", "metrics"),
            chunk_schema: "_timescaledb_internal".into(),
            chunk_prefix: "_hyper_1".into(),
        }
    }

    #[test]
    fn chunks_are_told_by_schema_and_prefix() {
        let h = metrics();
        assert!(h.owns("_timescaledb_internal", "_hyper_1_42_chunk"));
        assert!(!h.owns("_timescaledb_internal", "_hyper_12_42_chunk"));
        assert!(!h.owns("_timescaledb_internal", "compress_hyper_1_42_chunk"));
        assert!(!h.owns("_timescaledb_internal", "_hyper_1__chunk"));
        assert!(!h.owns("public", "_hyper_1_42_chunk"));
    }

    #[test]
    fn relations_resolve_to_their_hypertable_or_are_internal() {
        let chunked = [metrics()];
        let internal = ["_timescaledb_internal".to_owned()];
        assert_eq!(
            resolve(
                &chunked,
                &internal,
                "_timescaledb_internal",
                "_hyper_1_7_chunk"
            ),
            Resolved::ChunkOf(QualifiedName::new("public", "metrics"))
        );
        assert_eq!(
            resolve(
                &chunked,
                &internal,
                "_timescaledb_internal",
                "compress_hyper_2_8_chunk"
            ),
            Resolved::Internal
        );
        assert_eq!(
            resolve(&chunked, &internal, "public", "metrics"),
            Resolved::Itself
        );
    }

    #[test]
    fn markers() {
        assert_eq!(
            MoveMarker::of("::timescaledb-decompression-start"),
            Some(MoveMarker::Start)
        );
        assert_eq!(
            MoveMarker::of("::timescaledb-compression-end"),
            Some(MoveMarker::End)
        );
        assert_eq!(MoveMarker::of("pglive_ddl"), None);
    }
}
