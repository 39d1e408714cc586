//! TimescaleDB hypertables that may hold compressed chunks, copied chunk by
//! chunk.
//!
//! Read through its hypertable, a compressed chunk is decompressed on the
//! source, and the target compresses it again later: about six times the
//! work of moving its compressed batches as they are (README, "Migrating
//! TimescaleDB"). So a hypertable with compression enabled is planned as
//! parts of chunks by id ([`plan`]; the ranges leave no id out, so a chunk
//! a later snapshot holds is always in one). Before any part runs,
//! [`make_target_chunks`] makes each chunk on the target with the source's
//! slices — the target's chunks are then the source's, and no worker waits
//! on TimescaleDB's chunk-creation lock, which its transaction would hold
//! until it commits — and compresses, still empty, those the target can
//! take in compressed form: compressed on the source by the same
//! TimescaleDB version, in order (not `unordered`), with the settings the
//! target gives them. A part ([`copy_chunks`]) then moves such a chunk's
//! compressed batches into the target's compressed chunk and its rows not
//! yet compressed (a partial chunk's) through the hypertable; any other
//! chunk is read decompressed and written through the hypertable.
//!
//! TimescaleDB's own work on a chunk is not visible as of an older
//! snapshot: compressing truncates the chunk and writes its batches frozen
//! (visible to every snapshot), decompressing and recompressing drop the
//! compressed relation. So a part locks its chunk and its compressed
//! relation, then checks that neither was truncated, rewritten or dropped
//! since the snapshot ([`Error::ChunkChanged`] otherwise: a new snapshot
//! copies it); a chunk that is gone was dropped (retention), and the
//! hypertable no longer holds its rows either.

use pglive_postgres::{QualifiedName, quote_ident};
use tokio_postgres::GenericClient;

use crate::copier::TableCopy;
use crate::error::{Error, Result, source, target};

/// Chunk ids from the first to the last, inclusive (no last: every later
/// one), as [`PartRange::Chunks`](crate::PartRange::Chunks) holds them.
pub(crate) type ChunkRange = (i64, Option<i64>);

/// A hypertable and ranges of its chunks.
pub(crate) type HypertableChunks = (QualifiedName, Vec<ChunkRange>);

/// Chunks made (and compressed) on the target per statement.
const CHUNKS_PER_STATEMENT: usize = 200;

/// Leaves out the tombstones of dropped chunks that TimescaleDB before 2.26
/// kept in its catalog (`dropped`), whatever the version's columns.
const LIVE_CHUNK: &str = "coalesce((to_jsonb(c) ->> 'dropped')::bool, false) = false";

/// Chunk status bit: the compressed batches overlap in their order.
const STATUS_UNORDERED: i32 = 2;

/// A chunk planned as a part of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlannedChunk {
    /// Its id in the source's chunk catalog.
    pub id: i64,
    /// Its size with its compressed relation's.
    pub bytes: i64,
}

/// The chunks of hypertable `table` as the snapshot of `client` sees them,
/// in id order, when the hypertable has compression enabled; `None`
/// otherwise (it is copied in runs of chunks by time), and when the source
/// keeps no compression settings per chunk (TimescaleDB before 2.15), has
/// chunks in tiered storage, or no chunks at all (a plain table made a
/// hypertable on the target).
pub(crate) async fn plan(
    client: &impl GenericClient,
    table: &pglive_schema::Table,
) -> Result<Option<Vec<PlannedChunk>>> {
    let per_chunk_settings: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                             WHERE attrelid = pg_catalog.to_regclass('_timescaledb_catalog.compression_settings') \
                               AND attname = 'compress_relid' AND NOT attisdropped)",
            &[],
        )
        .await
        .map_err(source("reading whether the source has TimescaleDB"))?
        .get(0);
    if !per_chunk_settings {
        return Ok(None);
    }
    let rows = client
        .query(
            &format!(
                "SELECT c.id::int8, coalesce((to_jsonb(c) ->> 'osm_chunk')::bool, false), \
                        (coalesce(pg_catalog.pg_total_relation_size( \
                             pg_catalog.to_regclass(format('%I.%I', c.schema_name, c.table_name))), 0) \
                         + coalesce((SELECT pg_catalog.pg_total_relation_size( \
                                              pg_catalog.to_regclass(format('%I.%I', z.schema_name, z.table_name))) \
                                       FROM _timescaledb_catalog.chunk z WHERE z.id = c.compressed_chunk_id), 0))::int8 \
                   FROM _timescaledb_catalog.chunk c \
                   JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id \
                  WHERE h.schema_name = $1 AND h.table_name = $2 AND h.compression_state = 1 \
                    AND {LIVE_CHUNK} \
                  ORDER BY c.id"
            ),
            &[&table.name.schema, &table.name.name],
        )
        .await
        .map_err(source(format!("reading the chunks of {}", table.name)))?;
    if rows.is_empty() || rows.iter().any(|r| r.get::<_, bool>(1)) {
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
    /// The columns of its dimensions, sorted.
    dimensions: Vec<String>,
    /// The compression settings it was compressed with (JSON), when known.
    settings: Option<String>,
    /// Its compressed batches overlap in their order.
    unordered: bool,
}

/// The ids of hypertable `table`'s chunks within `ranges` that the snapshot
/// of `client` holds, in order.
async fn chunk_ids(
    client: &impl GenericClient,
    table: &QualifiedName,
    ranges: &[ChunkRange],
) -> Result<Vec<i64>> {
    let (firsts, lasts): (Vec<i64>, Vec<Option<i64>>) = ranges.iter().copied().unzip();
    Ok(client
        .query(
            &format!(
                "SELECT c.id::int8 FROM _timescaledb_catalog.chunk c \
                   JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id \
                  WHERE h.schema_name = $1 AND h.table_name = $2 AND {LIVE_CHUNK} \
                    AND EXISTS (SELECT 1 FROM unnest($3::int8[], $4::int8[]) r(first, last) \
                                 WHERE c.id >= r.first AND (r.last IS NULL OR c.id <= r.last)) \
                  ORDER BY c.id"
            ),
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
            "SELECT c.schema_name::text, c.table_name::text, \
                    z.schema_name::text, z.table_name::text, \
                    (SELECT jsonb_object_agg(d.column_name, \
                                             jsonb_build_array(s.range_start, s.range_end))::text \
                       FROM _timescaledb_catalog.chunk_constraint cc \
                       JOIN _timescaledb_catalog.dimension_slice s ON s.id = cc.dimension_slice_id \
                       JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id \
                      WHERE cc.chunk_id = c.id), \
                    ARRAY(SELECT d.column_name::text \
                            FROM _timescaledb_catalog.chunk_constraint cc \
                            JOIN _timescaledb_catalog.dimension_slice s ON s.id = cc.dimension_slice_id \
                            JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id \
                           WHERE cc.chunk_id = c.id ORDER BY 1), \
                    (SELECT (to_jsonb(cs) - 'relid' - 'compress_relid')::text \
                       FROM _timescaledb_catalog.compression_settings cs \
                      WHERE cs.relid = pg_catalog.to_regclass(format('%I.%I', c.schema_name, c.table_name))), \
                    c.status \
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
            name: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            compressed: match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
                (Some(schema), Some(name)) => Some(QualifiedName::new(schema, name)),
                _ => None,
            },
            slices: r.get::<_, Option<String>>(4).unwrap_or_else(|| "{}".into()),
            dimensions: r.get(5),
            settings: r.get(6),
            unordered: r.get::<_, i32>(7) & STATUS_UNORDERED != 0,
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

/// A hypertable on the target that chunks can be made in.
struct TargetHypertable {
    /// The columns of its dimensions, sorted.
    dimensions: Vec<String>,
    /// Compression is enabled.
    compression: bool,
}

impl TargetHypertable {
    /// Whether `chunk` can be made here with its slices.
    fn fits(&self, chunk: &SourceChunk) -> bool {
        self.dimensions == chunk.dimensions
    }
}

/// `table` on the target, when it is a hypertable there and TimescaleDB
/// makes chunks by their slices (`_timescaledb_functions.create_chunk`).
async fn target_hypertable(
    client: &impl GenericClient,
    table: &QualifiedName,
) -> Result<Option<TargetHypertable>> {
    let context = || format!("reading whether {table} is a hypertable on the target");
    let timescale: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL \
                AND pg_catalog.to_regprocedure( \
                      '_timescaledb_functions.create_chunk(regclass, jsonb, name, name, regclass)') \
                    IS NOT NULL",
            &[],
        )
        .await
        .map_err(target(context()))?
        .get(0);
    if !timescale {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT h.compression_state = 1, \
                    ARRAY(SELECT d.column_name::text FROM _timescaledb_catalog.dimension d \
                           WHERE d.hypertable_id = h.id ORDER BY 1) \
               FROM _timescaledb_catalog.hypertable h \
              WHERE h.schema_name = $1 AND h.table_name = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(target(context()))?;
    Ok(row.map(|r| TargetHypertable {
        compression: r.get(0),
        dimensions: r.get(1),
    }))
}

/// The compression settings of each of `chunks` on a server (JSON, as
/// [`source_chunks`] reads them), if it has any.
async fn chunk_settings(
    client: &impl GenericClient,
    chunks: &[&str],
) -> std::result::Result<Vec<Option<String>>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT (SELECT (to_jsonb(cs) - 'relid' - 'compress_relid')::text \
                       FROM _timescaledb_catalog.compression_settings cs \
                      WHERE cs.relid = c.name::regclass) \
               FROM unnest($1::text[]) WITH ORDINALITY AS c(name, n) ORDER BY c.n",
            &[&chunks],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Makes the chunks in the id ranges of each hypertable on the target with
/// the source's slices (where it is a hypertable of the same dimensions),
/// and compresses, empty, those the target can take in compressed form
/// (see the module's doc; the settings are compared once TimescaleDB has
/// given them, so that defaults it chose count, and a chunk whose settings
/// differ is decompressed again). Done again after a restart, it changes
/// nothing: existing chunks are kept and compressed ones stay as they are.
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
        let Some(hypertable) = target_hypertable(target_client, table).await? else {
            continue;
        };
        let ids = chunk_ids(source_client, table, ranges).await?;
        let chunks: Vec<SourceChunk> = source_chunks(source_client, &ids)
            .await?
            .into_iter()
            .filter(|c| hypertable.fits(c))
            .collect();
        let context = || format!("making the chunks of {table} on the target");
        for batch in chunks.chunks(CHUNKS_PER_STATEMENT) {
            let slices: Vec<&str> = batch.iter().map(|c| c.slices.as_str()).collect();
            let compress: Vec<bool> = batch
                .iter()
                .map(|c| {
                    same_version
                        && hypertable.compression
                        && c.compressed.is_some()
                        && c.settings.is_some()
                        && !c.unordered
                })
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
            let names: Vec<&str> = made.iter().map(String::as_str).collect();
            let settings = chunk_settings(target_client, &names)
                .await
                .map_err(target(context()))?;
            let differing: Vec<&str> = batch
                .iter()
                .zip(&compress)
                .zip(names.iter().zip(&settings))
                .filter(|((chunk, compressed), (_, settings))| {
                    **compressed && chunk.settings != **settings
                })
                .map(|(_, (name, _))| *name)
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

/// The target's compressed chunk `chunk` goes into, made when missing.
/// `None` when it is not compressed there.
async fn target_compressed_chunk(
    tx: &tokio_postgres::Transaction<'_>,
    table: &QualifiedName,
    slices: &str,
) -> Result<Option<(String, QualifiedName)>> {
    let row = tx
        .query_one(
            "SELECT format('%I.%I', c.schema_name, c.table_name), \
                    z.schema_name::text, z.table_name::text \
               FROM _timescaledb_functions.create_chunk($1::text::regclass, $2::text::jsonb) n \
               JOIN _timescaledb_catalog.chunk c ON c.id = n.chunk_id \
               LEFT JOIN _timescaledb_catalog.chunk z ON z.id = c.compressed_chunk_id",
            &[&table.to_string(), &slices],
        )
        .await
        .map_err(target(format!(
            "finding the chunk {slices} of {table} on the target"
        )))?;
    Ok(
        match (
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2),
        ) {
            (Some(schema), Some(name)) => Some((row.get(0), QualifiedName::new(schema, name))),
            _ => None,
        },
    )
}

/// Copies the chunks of hypertable `table` whose ids are in `range` as the
/// snapshot holds them, each into the same chunk on the target (see the
/// module's doc); returns the rows and bytes moved. `progress` hears
/// `(rows, bytes)` so far.
pub(crate) async fn copy_chunks(
    source_tx: &tokio_postgres::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableCopy,
    range: ChunkRange,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let (mut rows, mut bytes) = (0, 0);
    let ids = chunk_ids(source_tx, &table.name, &[range]).await?;
    for chunk in source_chunks(source_tx, &ids).await? {
        let mut report = |r, b| progress(rows + r, bytes + b);
        let (r, b) = copy_chunk(source_tx, tx, table, &chunk, &mut report).await?;
        rows += r;
        bytes += b;
    }
    Ok((rows, bytes))
}

/// Locks `relation` of the source (in the snapshot's transaction) until the
/// copy ends, and says whether it is as the snapshot saw it: `None` when it
/// is gone, else whether it was neither truncated nor rewritten since (its
/// file is the one the snapshot's catalog names).
async fn lock_unchanged(
    source_tx: &tokio_postgres::Transaction<'_>,
    relation: &QualifiedName,
) -> std::result::Result<Option<bool>, tokio_postgres::Error> {
    let name = relation.to_string();
    let present: bool = source_tx
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0);
    if !present {
        return Ok(None);
    }
    source_tx
        .batch_execute(&format!("LOCK TABLE {relation} IN ACCESS SHARE MODE"))
        .await?;
    Ok(Some(
        source_tx
            .query_opt(
                "SELECT c.relfilenode = pg_catalog.pg_relation_filenode(c.oid) \
                   FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
                &[&name],
            )
            .await?
            .is_some_and(|r| r.get::<_, bool>(0)),
    ))
}

/// Copies `chunk` of hypertable `table`.
async fn copy_chunk(
    source_tx: &tokio_postgres::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableCopy,
    chunk: &SourceChunk,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let what = format!("chunk {} of {}", chunk.name, table.name);
    let read_error = || source(format!("reading {what}"));
    let changed = || Error::ChunkChanged {
        table: table.name.clone(),
        chunk: chunk.name.clone(),
    };
    match lock_unchanged(source_tx, &chunk.name)
        .await
        .map_err(read_error())?
    {
        // Dropped since the snapshot (retention): the hypertable no longer
        // holds its rows either.
        None => return Ok((0, 0)),
        Some(false) => return Err(changed()),
        Some(true) => {}
    }
    if let Some(compressed) = &chunk.compressed
        && lock_unchanged(source_tx, compressed)
            .await
            .map_err(read_error())?
            != Some(true)
    {
        return Err(changed());
    }
    let format = if table.binary { "binary" } else { "text" };
    let batches = match &chunk.compressed {
        Some(from) if !chunk.unordered && chunk.settings.is_some() => {
            compressed_destination(source_tx, tx, table, chunk, from).await?
        }
        _ => None,
    };
    let Some((from, into)) = batches else {
        // Decompressed, through the hypertable (into the chunk made by
        // `make_target_chunks`, or routed).
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
    // The compressed batches as they are.
    let batch_columns: Vec<String> = columns(source_tx, &from)
        .await
        .map_err(read_error())?
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
    // only), through the hypertable: TimescaleDB marks the target's chunk
    // partial.
    let (rows, bytes) = copy_between(
        source_tx,
        tx,
        &format!(
            "COPY {}{} TO STDOUT (FORMAT {format})",
            chunk.name,
            table.column_list()
        ),
        &table.copy_from(false),
        &what,
        &mut |r, b| progress(r, batch_bytes + b),
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

/// Where `chunk`'s compressed batches (in `from` on the source) go on the
/// target: `(from, into)` when the target's chunk is compressed by the
/// same TimescaleDB version with the same settings and columns; `None`
/// when the chunk must be read decompressed.
async fn compressed_destination(
    source_tx: &tokio_postgres::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableCopy,
    chunk: &SourceChunk,
    from: &QualifiedName,
) -> Result<Option<(QualifiedName, QualifiedName)>> {
    let what = || format!("chunk {} of {}", chunk.name, table.name);
    let Some(hypertable) = target_hypertable(tx, &table.name).await? else {
        return Ok(None);
    };
    if !hypertable.fits(chunk) {
        return Ok(None);
    }
    let Some((target_chunk, into)) =
        target_compressed_chunk(tx, &table.name, &chunk.slices).await?
    else {
        return Ok(None);
    };
    let versions = (
        timescale_version(source_tx)
            .await
            .map_err(source(format!("reading {}", what())))?,
        timescale_version(tx)
            .await
            .map_err(target(format!("writing {}", what())))?,
    );
    let settings = chunk_settings(tx, &[&target_chunk])
        .await
        .map_err(target(format!("writing {}", what())))?;
    let same = versions.0 == versions.1
        && settings.first() == Some(&chunk.settings)
        && columns(source_tx, from)
            .await
            .map_err(source(format!("reading {}", what())))?
            == columns(tx, &into)
                .await
                .map_err(target(format!("writing {}", what())))?;
    Ok(same.then(|| (from.clone(), into)))
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
