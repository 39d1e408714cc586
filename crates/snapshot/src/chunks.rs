//! TimescaleDB hypertables with compressed chunks, copied chunk by chunk.
//!
//! Read through its hypertable, a compressed chunk is decompressed on the
//! source, and the target compresses it again later: about six times the
//! work of moving its compressed batches as they are (README, "Migrating
//! TimescaleDB"). So a hypertable with compressed chunks is planned as one
//! part per chunk ([`plan`]). Before any part runs, [`make_target_chunks`]
//! makes each of them on the target with the source's slices — the
//! target's chunks are then the source's, and no worker waits on
//! TimescaleDB's chunk-creation lock, which its transaction would hold
//! until it commits — and compresses, still empty, those the target can
//! take in compressed form: the same TimescaleDB version on both sides and
//! the compression settings the chunk was compressed with (segmentby,
//! orderby, sparse indexes) equal to the target hypertable's. A part
//! ([`copy_chunk`]) then moves such a chunk's compressed batches into the
//! target's compressed chunk and its uncompressed rows (a partial chunk's)
//! into the chunk itself; any other chunk is read decompressed and written
//! through the hypertable.
//!
//! The snapshot's catalog may be older than the chunk: compressed,
//! decompressed or dropped since. A chunk is read as it is now, in the
//! relations TimescaleDB itself would read it from under the snapshot: a
//! compressed chunk whose compressed relation is gone is read decompressed,
//! a chunk that is gone has no rows to copy.

use pglive_postgres::{QualifiedName, quote_ident};
use tokio_postgres::GenericClient;

use crate::copier::TableCopy;
use crate::error::{Result, source, target};

/// Chunk ids from the first to the last, inclusive (no last: every later
/// one), as [`PartRange::Chunks`](crate::PartRange::Chunks) holds them.
pub(crate) type ChunkRange = (i64, Option<i64>);

/// A hypertable and ranges of its chunks.
pub(crate) type HypertableChunks = (QualifiedName, Vec<ChunkRange>);

/// Chunks made (and compressed) on the target per statement.
const CHUNKS_PER_STATEMENT: usize = 200;

/// A chunk planned as a part of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlannedChunk {
    /// Its id in the source's chunk catalog.
    pub id: i64,
    /// Its size with its compressed relation's.
    pub bytes: i64,
}

/// The chunks of hypertable `table` as the snapshot of `client` sees them,
/// oldest first, when at least one is compressed; `None` otherwise (the
/// hypertable is copied in runs of chunks by time), or when the source
/// has no chunks at all (a plain table made a hypertable on the target).
pub(crate) async fn plan(
    client: &impl GenericClient,
    table: &pglive_schema::Table,
) -> Result<Option<Vec<PlannedChunk>>> {
    let timescale: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('_timescaledb_catalog.chunk') IS NOT NULL",
            &[],
        )
        .await
        .map_err(source("reading whether the source has TimescaleDB"))?
        .get(0);
    if !timescale {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT c.id::int8, c.compressed_chunk_id IS NOT NULL, \
                    (coalesce(pg_catalog.pg_total_relation_size( \
                         pg_catalog.to_regclass(format('%I.%I', c.schema_name, c.table_name))), 0) \
                     + coalesce((SELECT pg_catalog.pg_total_relation_size( \
                                          pg_catalog.to_regclass(format('%I.%I', z.schema_name, z.table_name))) \
                                   FROM _timescaledb_catalog.chunk z WHERE z.id = c.compressed_chunk_id), 0))::int8 \
               FROM _timescaledb_catalog.chunk c \
               JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id \
              WHERE h.schema_name = $1 AND h.table_name = $2 \
              ORDER BY c.id",
            &[&table.name.schema, &table.name.name],
        )
        .await
        .map_err(source(format!("reading the chunks of {}", table.name)))?;
    if !rows.iter().any(|r| r.get::<_, bool>(1)) {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .map(|r| PlannedChunk {
                id: r.get(0),
                bytes: r.get(2),
            })
            .collect(),
    ))
}

/// A source chunk as the snapshot's catalog describes it.
struct SourceChunk {
    name: QualifiedName,
    /// Its compressed relation, when compressed.
    compressed: Option<QualifiedName>,
    /// Its slices, as `_timescaledb_functions.create_chunk` takes them.
    slices: String,
    /// The compression settings it was compressed with (JSON), when known.
    settings: Option<String>,
}

/// The ids of hypertable `table`'s chunks within `ranges` (first and last
/// id, inclusive; no last: every later one) that the snapshot of `client`
/// holds, in order.
async fn chunk_ids(
    client: &impl GenericClient,
    table: &QualifiedName,
    ranges: &[ChunkRange],
) -> Result<Vec<i64>> {
    let (firsts, lasts): (Vec<i64>, Vec<Option<i64>>) = ranges.iter().copied().unzip();
    Ok(client
        .query(
            "SELECT c.id::int8 FROM _timescaledb_catalog.chunk c \
               JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id \
              WHERE h.schema_name = $1 AND h.table_name = $2 \
                AND EXISTS (SELECT 1 FROM unnest($3::int8[], $4::int8[]) r(first, last) \
                             WHERE c.id >= r.first AND (r.last IS NULL OR c.id <= r.last)) \
              ORDER BY c.id",
            &[&table.schema, &table.name, &firsts, &lasts],
        )
        .await
        .map_err(source(format!("reading the chunks of {table}")))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Reads chunks `ids` of the source (in the snapshot's transaction).
async fn source_chunks(client: &impl GenericClient, ids: &[i64]) -> Result<Vec<SourceChunk>> {
    let rows = client
        .query(
            "SELECT c.id::int8, c.schema_name::text, c.table_name::text, \
                    z.schema_name::text, z.table_name::text, \
                    (SELECT jsonb_object_agg(d.column_name, \
                                             jsonb_build_array(s.range_start, s.range_end)) \
                       FROM _timescaledb_catalog.chunk_constraint cc \
                       JOIN _timescaledb_catalog.dimension_slice s ON s.id = cc.dimension_slice_id \
                       JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id \
                      WHERE cc.chunk_id = c.id)::text, \
                    (SELECT (to_jsonb(cs) - 'relid' - 'compress_relid')::text \
                       FROM _timescaledb_catalog.compression_settings cs \
                      WHERE cs.relid = pg_catalog.to_regclass(format('%I.%I', c.schema_name, c.table_name))) \
               FROM _timescaledb_catalog.chunk c \
               LEFT JOIN _timescaledb_catalog.chunk z ON z.id = c.compressed_chunk_id \
              WHERE c.id = ANY($1::int8[]) \
              ORDER BY c.id",
            &[&ids],
        )
        .await
        .map_err(source("reading chunks from the source's catalog"))?;
    Ok(rows
        .iter()
        .map(|r| SourceChunk {
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            compressed: match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(4)) {
                (Some(schema), Some(name)) => Some(QualifiedName::new(schema, name)),
                _ => None,
            },
            slices: r.get::<_, Option<String>>(5).unwrap_or_else(|| "{}".into()),
            settings: r.get(6),
        })
        .collect())
}

/// The TimescaleDB version of a server, if it has the extension.
async fn timescale_version(
    client: &impl GenericClient,
) -> std::result::Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Whether `table` is a hypertable on the target.
async fn target_hypertable(client: &impl GenericClient, table: &QualifiedName) -> Result<bool> {
    let context = || format!("reading whether {table} is a hypertable on the target");
    let timescale: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL",
            &[],
        )
        .await
        .map_err(target(context()))?
        .get(0);
    if !timescale {
        return Ok(false);
    }
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable \
                             WHERE schema_name = $1 AND table_name = $2)",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(target(context()))?
        .get(0))
}

/// Makes the chunks in the id ranges of each hypertable on the target with
/// the source's slices (where it is a hypertable), and compresses, empty,
/// those the target can take in compressed form: compressed on the source
/// by the same TimescaleDB version, with the settings the target gives
/// them (compared once TimescaleDB has given them, so that defaults it
/// chose count; a chunk whose settings differ is decompressed again). Done
/// again after a restart, it changes nothing: existing chunks are kept and
/// compressed ones stay as they are.
pub(crate) async fn make_target_chunks(
    source_client: &impl GenericClient,
    target_client: &impl GenericClient,
    chunks: &[HypertableChunks],
) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let Some(target_version) = timescale_version(target_client)
        .await
        .map_err(target("reading the target's TimescaleDB version"))?
    else {
        return Ok(());
    };
    let source_version = timescale_version(source_client)
        .await
        .map_err(source("reading the source's TimescaleDB version"))?;
    let same_version = source_version.as_deref() == Some(target_version.as_str());
    for (table, ranges) in chunks {
        if !target_hypertable(target_client, table).await? {
            continue;
        }
        let ids = chunk_ids(source_client, table, ranges).await?;
        let chunks = source_chunks(source_client, &ids).await?;
        let context = || format!("making the chunks of {table} on the target");
        for batch in chunks.chunks(CHUNKS_PER_STATEMENT) {
            let slices: Vec<&str> = batch.iter().map(|c| c.slices.as_str()).collect();
            let compress: Vec<bool> = batch
                .iter()
                .map(|c| same_version && c.compressed.is_some() && c.settings.is_some())
                .collect();
            let made: Vec<String> = target_client
                .query(
                    "SELECT format('%I.%I', c.schema_name, c.table_name), \
                            CASE WHEN s.compress \
                                 THEN compress_chunk(format('%I.%I', c.schema_name, c.table_name)::regclass, true)::text \
                            END \
                       FROM unnest($2::text[], $3::bool[]) WITH ORDINALITY AS s(slices, compress, n), \
                            LATERAL _timescaledb_functions.create_chunk($1::text::regclass, s.slices::jsonb) c \
                      ORDER BY s.n",
                    &[&table.to_string(), &slices, &compress],
                )
                .await
                .map_err(target(context()))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let settings: Vec<Option<String>> = target_client
                .query(
                    "SELECT (SELECT (to_jsonb(cs) - 'relid' - 'compress_relid')::text \
                               FROM _timescaledb_catalog.compression_settings cs \
                              WHERE cs.relid = c.name::regclass) \
                       FROM unnest($1::text[]) WITH ORDINALITY AS c(name, n) ORDER BY c.n",
                    &[&made],
                )
                .await
                .map_err(target(context()))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let differing: Vec<&String> = batch
                .iter()
                .zip(&compress)
                .zip(made.iter().zip(&settings))
                .filter(|((chunk, compressed), (_, settings))| {
                    **compressed && chunk.settings != **settings
                })
                .map(|(_, (name, _))| name)
                .collect();
            if !differing.is_empty() {
                target_client
                    .query(
                        "SELECT decompress_chunk(c::regclass, true) FROM unnest($1::text[]) c",
                        &[&differing],
                    )
                    .await
                    .map_err(target(context()))?;
            }
        }
    }
    Ok(())
}

/// The columns of `relation` as `name type` pairs, in order.
async fn columns(
    client: &impl GenericClient,
    relation: &QualifiedName,
) -> std::result::Result<Vec<(String, String)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
              WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
              ORDER BY attnum",
            &[&relation.to_string()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Where one chunk goes on the target.
struct TargetChunk {
    chunk: QualifiedName,
    /// Its compressed relation, when it is compressed.
    compressed: Option<QualifiedName>,
}

/// The target's chunk with `slices` of hypertable `table` (made when
/// missing), or `None` when `table` is no hypertable there.
async fn target_chunk(
    tx: &tokio_postgres::Transaction<'_>,
    table: &QualifiedName,
    slices: &str,
) -> Result<Option<TargetChunk>> {
    if !target_hypertable(tx, table).await? {
        return Ok(None);
    }
    let row = tx
        .query_one(
            "SELECT c.schema_name::text, c.table_name::text, z.schema_name::text, z.table_name::text \
               FROM _timescaledb_functions.create_chunk($1::text::regclass, $2::text::jsonb) n \
               JOIN _timescaledb_catalog.chunk c ON c.id = n.chunk_id \
               LEFT JOIN _timescaledb_catalog.chunk z ON z.id = c.compressed_chunk_id",
            &[&table.to_string(), &slices],
        )
        .await
        .map_err(target(format!("finding the chunk {slices} of {table} on the target")))?;
    Ok(Some(TargetChunk {
        chunk: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
        compressed: match (
            row.get::<_, Option<String>>(2),
            row.get::<_, Option<String>>(3),
        ) {
            (Some(schema), Some(name)) => Some(QualifiedName::new(schema, name)),
            _ => None,
        },
    }))
}

/// Copies the chunks of hypertable `table` whose ids are in `range` (first
/// and last, inclusive; no last: every later one) as the snapshot holds
/// them, each into the same chunk on the target (see the module's doc);
/// returns the rows and bytes moved. `progress` hears `(rows, bytes)` so
/// far.
pub(crate) async fn copy_chunks(
    source_tx: &tokio_postgres::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableCopy,
    range: ChunkRange,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let (mut rows, mut bytes) = (0, 0);
    for id in chunk_ids(source_tx, &table.name, &[range]).await? {
        let mut report = |r, b| progress(rows + r, bytes + b);
        let (r, b) = copy_chunk(source_tx, tx, table, id, &mut report).await?;
        rows += r;
        bytes += b;
    }
    Ok((rows, bytes))
}

/// Copies chunk `id` of hypertable `table`.
async fn copy_chunk(
    source_tx: &tokio_postgres::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableCopy,
    id: i64,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let Some(chunk) = source_chunks(source_tx, &[id]).await?.into_iter().next() else {
        return Ok((0, 0));
    };
    let what = format!("chunk {} of {}", chunk.name, table.name);
    let exists = |relation: &QualifiedName| {
        let relation = relation.to_string();
        async move {
            source_tx
                .query_one(
                    "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                    &[&relation],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
        }
    };
    // Dropped since the snapshot (retention): the hypertable no longer
    // holds its rows either.
    if !exists(&chunk.name)
        .await
        .map_err(source(format!("looking for {what}")))?
    {
        return Ok((0, 0));
    }
    let destination = target_chunk(tx, &table.name, &chunk.slices).await?;
    let compressed = match (&chunk.compressed, &destination) {
        (
            Some(from),
            Some(TargetChunk {
                compressed: Some(into),
                ..
            }),
        ) => {
            let present = exists(from)
                .await
                .map_err(source(format!("looking for {what}")))?;
            let same = present
                && columns(source_tx, from)
                    .await
                    .map_err(source(format!("reading the columns of {from}")))?
                    == columns(tx, into)
                        .await
                        .map_err(target(format!("reading the columns of {into}")))?;
            same.then(|| (from.clone(), into.clone()))
        }
        _ => None,
    };
    let format = if table.binary { "binary" } else { "text" };
    let Some((from, into)) = compressed else {
        // Decompressed, through the hypertable (into the chunk made above).
        let read = format!(
            "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT {format})",
            table.columns, chunk.name
        );
        return copy_between(
            source_tx,
            tx,
            &read,
            &table.copy_from(false),
            &what,
            &mut progress,
        )
        .await;
    };
    let destination = destination.expect("a compressed target chunk");
    // The compressed batches as they are.
    let batch_columns: Vec<String> = columns(source_tx, &from)
        .await
        .map_err(source(format!("reading the columns of {from}")))?
        .into_iter()
        .map(|(name, _)| quote_ident(&name))
        .collect();
    let batch_columns = batch_columns.join(", ");
    let (_, batch_bytes) = copy_between(
        source_tx,
        tx,
        &format!("COPY {from} ({batch_columns}) TO STDOUT (FORMAT {format})"),
        &format!("COPY {into} ({batch_columns}) FROM STDIN (FORMAT {format})"),
        &what,
        &mut progress,
    )
    .await?;
    // Rows not compressed yet (`COPY chunk TO` reads the chunk's own table
    // only); TimescaleDB marks the target's chunk partial when there are.
    let (rows, bytes) = copy_between(
        source_tx,
        tx,
        &format!(
            "COPY {}{} TO STDOUT (FORMAT {format})",
            chunk.name,
            table.column_list()
        ),
        &format!(
            "COPY {}{} FROM STDIN (FORMAT {format})",
            destination.chunk,
            table.column_list()
        ),
        &what,
        &mut progress,
    )
    .await?;
    // The rows in the compressed batches, as the batches count them.
    let compressed_rows: i64 = tx
        .query_one(
            &format!("SELECT coalesce(sum(_ts_meta_count), 0)::int8 FROM {into}"),
            &[],
        )
        .await
        .map_err(target(format!("counting the rows of {what}")))?
        .get(0);
    Ok((rows + compressed_rows as u64, bytes + batch_bytes))
}

/// One `COPY` from the source's snapshot into the target's transaction.
async fn copy_between(
    source_tx: &tokio_postgres::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    read: &str,
    write: &str,
    what: &str,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let stream = source_tx
        .copy_out(read)
        .await
        .map_err(source(format!("reading {what}")))?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(write)
        .await
        .map_err(target(format!("writing {what}")))?;
    crate::pipe::pipe(stream, sink, what, progress).await
}
