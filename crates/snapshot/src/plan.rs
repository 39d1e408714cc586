//! Splitting tables into parts.
//!
//! A part is the unit of work a worker claims and commits. Most tables are
//! one part (copied with `TRUNCATE` + `COPY … FREEZE`, which writes frozen
//! rows and skips a later anti-wraparound vacuum). A table above
//! [`PlanOptions::split_threshold`] is cut into parts of about
//! [`PlanOptions::part_size`] so several workers share it:
//!
//! - by ranges of heap blocks (`WHERE ctid >= '(a,0)'::tid AND ctid <
//!   '(b,0)'::tid`), which PostgreSQL 14 and later read with a TID range
//!   scan, touching only those blocks: parts are even in size whatever the
//!   keys' distribution, and read sequentially;
//! - on older servers, which would scan the whole table for each block
//!   range, by ranges of the primary key when that is a single integer
//!   column (`WHERE k >= a AND k < b`, read through the source's index),
//!   cut at the quantiles of the key's statistics (`pg_stats`) so skewed
//!   keys still give even parts, or evenly between its minimum and maximum
//!   without statistics; other tables there get block ranges.
//!
//! The first range is open below and the last open above, so rows that a
//! later snapshot holds beyond the planned bounds are still copied.
//! Large objects form one more part of their own.

use pglive_postgres::QualifiedName;
use pglive_schema::Table;
use tokio_postgres::GenericClient;

use crate::error::{Result, source};

/// How tables are split into parts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanOptions {
    /// Tables larger than this many bytes (`pg_table_size`) are split.
    /// Default: 1 GiB.
    pub split_threshold: i64,
    /// The size aimed at for each part of a split table. Default: 256 MiB.
    pub part_size: i64,
    /// Copy large objects. Default: on.
    pub large_objects: bool,
    /// Copy a TimescaleDB hypertable with compression enabled chunk by
    /// chunk, each compressed one in its compressed form where the target
    /// can take it. Default: on.
    pub compressed_chunks: bool,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            split_threshold: 1 << 30,
            part_size: 256 << 20,
            large_objects: true,
            compressed_chunks: true,
        }
    }
}

/// Which rows of a table a part covers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartRange {
    /// The whole table.
    Whole,
    /// `column >= start AND column < end` (an open bound is `None`).
    Key {
        /// The integer primary key column.
        column: String,
        /// Inclusive lower bound.
        start: Option<i64>,
        /// Exclusive upper bound.
        end: Option<i64>,
    },
    /// Heap blocks `start <= block < end` (an open bound is `None`).
    Blocks {
        /// First block.
        start: Option<i64>,
        /// Block after the last.
        end: Option<i64>,
    },
    /// Every large object (the part's table is `pg_catalog.pg_largeobject`).
    LargeObjects,
    /// Whole chunks of a TimescaleDB hypertable: `column >= start AND
    /// column < end` on its time column, the bounds in TimescaleDB's
    /// internal time (microseconds since the Unix epoch; an open bound is
    /// `None`).
    Time {
        /// The time column.
        column: String,
        /// Its type.
        time_type: TimeType,
        /// Inclusive lower bound.
        start: Option<i64>,
        /// Exclusive upper bound.
        end: Option<i64>,
    },
    /// Chunks of a TimescaleDB hypertable by their ids in the source's
    /// chunk catalog (`_timescaledb_catalog.chunk.id`), each copied into the
    /// same chunk on the target, in its compressed form when it is
    /// compressed. A hypertable's ranges leave no id out (the last is open
    /// above), so chunks a later snapshot holds are copied when it copies
    /// the table again.
    Chunks {
        /// The first chunk's id.
        first: i64,
        /// The last chunk's id (`None`: every later one).
        last: Option<i64>,
    },
}

/// The type of a hypertable's time column, which says how TimescaleDB's
/// internal time converts to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeType {
    /// `timestamp with time zone`.
    TimestampTz,
    /// `timestamp without time zone`.
    Timestamp,
    /// `date`.
    Date,
}

impl TimeType {
    /// The type of a column by its name (`format_type`), if it is one.
    pub fn of(type_name: &str) -> Option<TimeType> {
        match type_name {
            "timestamp with time zone" => Some(TimeType::TimestampTz),
            "timestamp without time zone" => Some(TimeType::Timestamp),
            "date" => Some(TimeType::Date),
            _ => None,
        }
    }

    /// The kind of its parts, as stored in the state table.
    fn kind(self) -> &'static str {
        match self {
            TimeType::TimestampTz => "timestamptz",
            TimeType::Timestamp => "timestamp",
            TimeType::Date => "date",
        }
    }

    /// The type whose parts are stored as `kind`.
    pub(crate) fn from_kind(kind: &str) -> Option<TimeType> {
        [TimeType::TimestampTz, TimeType::Timestamp, TimeType::Date]
            .into_iter()
            .find(|t| t.kind() == kind)
    }

    /// TimescaleDB's function from internal time to this type.
    fn conversion(self) -> &'static str {
        match self {
            TimeType::TimestampTz => "_timescaledb_functions.to_timestamp",
            TimeType::Timestamp => "_timescaledb_functions.to_timestamp_without_timezone",
            TimeType::Date => "_timescaledb_functions.to_date",
        }
    }
}

impl PartRange {
    /// The kind as stored in the state table.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PartRange::Whole => "table",
            PartRange::Key { .. } => "key",
            PartRange::Blocks { .. } => "blocks",
            PartRange::LargeObjects => "large_objects",
            PartRange::Time { time_type, .. } => time_type.kind(),
            PartRange::Chunks { .. } => "chunks",
        }
    }

    /// The SQL condition selecting the part's rows from its table, or
    /// `None` for all rows (chunks are read one by one).
    pub fn condition(&self) -> Option<String> {
        let bounds =
            |expr: &str, start: &Option<i64>, end: &Option<i64>, wrap: &dyn Fn(i64) -> String| {
                let mut parts = Vec::new();
                if let Some(start) = start {
                    parts.push(format!("{expr} >= {}", wrap(*start)));
                }
                if let Some(end) = end {
                    parts.push(format!("{expr} < {}", wrap(*end)));
                }
                (!parts.is_empty()).then(|| parts.join(" AND "))
            };
        match self {
            PartRange::Whole | PartRange::LargeObjects | PartRange::Chunks { .. } => None,
            PartRange::Key { column, start, end } => {
                bounds(&pglive_postgres::quote_ident(column), start, end, &|v| {
                    v.to_string()
                })
            }
            PartRange::Blocks { start, end } => {
                bounds("ctid", start, end, &|v| format!("'({v},0)'::tid"))
            }
            PartRange::Time {
                column,
                time_type,
                start,
                end,
            } => bounds(&pglive_postgres::quote_ident(column), start, end, &|v| {
                format!("{}({v})", time_type.conversion())
            }),
        }
    }
}

/// One unit of copy work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The table (a leaf partition for partitioned tables).
    pub table: QualifiedName,
    /// The part's number within its table, from 0.
    pub number: i32,
    /// The rows it covers.
    pub range: PartRange,
    /// Its estimated size, which orders the work (largest first).
    pub estimated_bytes: i64,
}

/// A hypertable's parts: runs of whole chunks of about `part_size` bytes
/// each, cut along its (first) time dimension, the first and last open;
/// the whole table when it has no such dimension or one run.
async fn chunk_ranges(
    client: &impl GenericClient,
    table: &Table,
    part_size: i64,
) -> Result<Vec<PartRange>> {
    let rows = client
        .query(
            "WITH d AS (SELECT d.id, d.column_name::text AS column_name, \
                               format_type(d.column_type, NULL) AS column_type \
                          FROM _timescaledb_catalog.dimension d \
                          JOIN _timescaledb_catalog.hypertable h ON h.id = d.hypertable_id \
                         WHERE h.schema_name = $1 AND h.table_name = $2 \
                           AND d.interval_length IS NOT NULL \
                         ORDER BY d.id LIMIT 1) \
             SELECT d.column_name, d.column_type, ds.range_start, \
                    sum(coalesce(pg_catalog.pg_total_relation_size( \
                            pg_catalog.to_regclass(format('%I.%I', c.schema_name, c.table_name))), 0) \
                        + coalesce((SELECT pg_catalog.pg_total_relation_size( \
                                             pg_catalog.to_regclass(format('%I.%I', z.schema_name, z.table_name))) \
                                      FROM _timescaledb_catalog.chunk z WHERE z.id = c.compressed_chunk_id), 0))::int8 \
               FROM d \
               JOIN _timescaledb_catalog.dimension_slice ds ON ds.dimension_id = d.id \
               JOIN _timescaledb_catalog.chunk_constraint cc ON cc.dimension_slice_id = ds.id \
               JOIN _timescaledb_catalog.chunk c ON c.id = cc.chunk_id \
              GROUP BY 1, 2, 3 ORDER BY 3",
            &[&table.name.schema, &table.name.name],
        )
        .await
        .map_err(source(format!("reading the chunks of {}", table.name)))?;
    let Some(first) = rows.first() else {
        return Ok(vec![PartRange::Whole]);
    };
    let column: String = first.get(0);
    let type_name: String = first.get(1);
    let time_type = TimeType::of(&type_name);
    let integer = matches!(type_name.as_str(), "smallint" | "integer" | "bigint");
    if time_type.is_none() && !integer {
        return Ok(vec![PartRange::Whole]);
    }
    // Cut before a chunk once the run so far holds about part_size.
    let mut cuts: Vec<i64> = Vec::new();
    let mut run = 0;
    for row in &rows {
        let (start, bytes): (i64, i64) = (row.get(2), row.get(3));
        if run >= part_size {
            cuts.push(start);
            run = 0;
        }
        run += bytes;
    }
    if cuts.is_empty() {
        return Ok(vec![PartRange::Whole]);
    }
    let mut bounds: Vec<Option<i64>> = vec![None];
    bounds.extend(cuts.into_iter().map(Some));
    bounds.push(None);
    Ok(bounds
        .windows(2)
        .map(|w| match time_type {
            Some(time_type) => PartRange::Time {
                column: column.clone(),
                time_type,
                start: w[0],
                end: w[1],
            },
            None => PartRange::Key {
                column: column.clone(),
                start: w[0],
                end: w[1],
            },
        })
        .collect())
}

/// The name under which large objects are tracked.
pub(crate) fn large_objects_name() -> QualifiedName {
    QualifiedName::new("pg_catalog", "pg_largeobject")
}

/// Splits `tables` into parts, asking the source (a session that imported
/// the snapshot) for key bounds and block counts of the tables to split.
/// Partitioned tables get no parts of their own: their leaves do.
pub async fn plan(
    client: &impl GenericClient,
    tables: &[Table],
    options: &PlanOptions,
) -> Result<Vec<Part>> {
    let tid_range_scans = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await
        .map_err(source("reading the source's version"))?
        .get::<_, bool>(0);
    let mut parts = Vec::new();
    for table in tables.iter().filter(|t| t.holds_rows()) {
        let pieces = if table.bytes > options.split_threshold {
            ((table.bytes + options.part_size - 1) / options.part_size.max(1)).max(1)
        } else {
            1
        };
        let chunks = match table.hypertable && options.compressed_chunks {
            true => crate::chunks::plan(client, table).await?,
            false => None,
        };
        if let Some(chunks) = chunks {
            // Ranges that leave no id out: a chunk whose id came before
            // another's but that committed after this snapshot is in one
            // when a later snapshot copies the table again.
            let mut first = i64::MIN;
            let mut ranges = Vec::with_capacity(chunks.len() + 1);
            for chunk in &chunks {
                ranges.push((first, Some(chunk.id), chunk.bytes));
                first = chunk.id.saturating_add(1);
            }
            ranges.push((first, None, 0));
            parts.extend(
                ranges
                    .into_iter()
                    .enumerate()
                    .map(|(i, (first, last, bytes))| Part {
                        table: table.name.clone(),
                        number: i as i32,
                        range: PartRange::Chunks { first, last },
                        estimated_bytes: bytes,
                    }),
            );
            continue;
        }
        let ranges = if table.hypertable && table.bytes > options.split_threshold {
            chunk_ranges(client, table, options.part_size).await?
        } else if pieces <= 1 {
            vec![PartRange::Whole]
        } else if let (false, Some(key)) = (tid_range_scans, table.integer_key()) {
            key_ranges(client, table, key, pieces).await?
        } else {
            let blocks: i64 = client
                .query_one(
                    "SELECT pg_catalog.pg_relation_size($1::oid) \
                            / current_setting('block_size')::int8",
                    &[&table.oid],
                )
                .await
                .map_err(source(format!("reading the size of {}", table.name)))?
                .get(0);
            split(0, blocks.max(1) - 1, pieces)
                .into_iter()
                .map(|(start, end)| PartRange::Blocks { start, end })
                .collect()
        };
        let count = ranges.len() as i64;
        parts.extend(ranges.into_iter().enumerate().map(|(i, range)| Part {
            table: table.name.clone(),
            number: i as i32,
            range,
            estimated_bytes: table.bytes / count,
        }));
    }
    if options.large_objects {
        let row = client
            .query_one(
                "SELECT count(*), \
                        pg_catalog.has_table_privilege('pg_catalog.pg_largeobject', 'SELECT') \
                 FROM pg_catalog.pg_largeobject_metadata",
                &[],
            )
            .await
            .map_err(source("counting large objects"))?;
        let (count, readable): (i64, bool) = (row.get(0), row.get(1));
        // Their size is known only to those who may read pg_largeobject.
        let bytes: i64 = if count > 0 && readable {
            client
                .query_one(
                    "SELECT coalesce(sum(pg_catalog.octet_length(data)), 0)::int8 \
                     FROM pg_catalog.pg_largeobject",
                    &[],
                )
                .await
                .map_err(source("measuring large objects"))?
                .get(0)
        } else {
            count
        };
        if count > 0 {
            parts.push(Part {
                table: large_objects_name(),
                number: 0,
                range: PartRange::LargeObjects,
                estimated_bytes: bytes,
            });
        }
    }
    largest_first(&mut parts);
    Ok(parts)
}

/// Orders parts largest first (then by table and number), the order
/// workers take them in, so the longest work starts first.
pub fn largest_first(parts: &mut [Part]) {
    parts.sort_by(|a, b| {
        b.estimated_bytes
            .cmp(&a.estimated_bytes)
            .then_with(|| a.table.cmp(&b.table))
            .then(a.number.cmp(&b.number))
    });
}

/// Ranges of `table`'s integer `key` for `pieces` parts: at the quantiles
/// of the key's statistics when the source has them, else evenly between
/// its minimum and maximum. The first range is open below, the last open
/// above, so together they hold every row, whatever was added since.
pub async fn key_ranges(
    client: &impl GenericClient,
    table: &Table,
    key: &str,
    pieces: i64,
) -> Result<Vec<PartRange>> {
    let column = key.to_owned();
    let ranges = |bounds: Vec<(Option<i64>, Option<i64>)>| {
        bounds
            .into_iter()
            .map(|(start, end)| PartRange::Key {
                column: column.clone(),
                start,
                end,
            })
            .collect()
    };
    let histogram: Option<Vec<i64>> = client
        .query_opt(
            "SELECT histogram_bounds::text::int8[] FROM pg_catalog.pg_stats
              WHERE schemaname = $1 AND tablename = $2 AND attname = $3 AND NOT inherited",
            &[&table.name.schema, &table.name.name, &key],
        )
        .await
        .ok()
        .flatten()
        .and_then(|row| row.get(0));
    if let Some(histogram) = histogram.filter(|h| h.len() > 2) {
        return Ok(ranges(open_ranges(quantiles(&histogram, pieces))));
    }
    let quoted = pglive_postgres::quote_ident(key);
    let row = client
        .query_one(
            &format!(
                "SELECT min({quoted})::int8, max({quoted})::int8 FROM ONLY {}",
                table.name
            ),
            &[],
        )
        .await
        .map_err(source(format!("reading the key range of {}", table.name)))?;
    Ok(
        match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
            (Some(min), Some(max)) => ranges(split(min, max, pieces)),
            _ => vec![PartRange::Whole],
        },
    )
}

/// `pieces - 1` cut points at even steps through a sorted histogram's
/// bounds (each step holding about the same share of rows), without
/// repeats.
pub(crate) fn quantiles(histogram: &[i64], pieces: i64) -> Vec<i64> {
    let steps = histogram.len() as i64 - 1;
    let pieces = pieces.clamp(1, steps.max(1));
    let mut cuts: Vec<i64> = (1..pieces)
        .map(|i| histogram[(i * steps / pieces) as usize])
        .collect();
    cuts.dedup();
    cuts
}

/// Ranges between cut points, the first open below and the last open above.
fn open_ranges(cuts: Vec<i64>) -> Vec<(Option<i64>, Option<i64>)> {
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut start = None;
    for cut in cuts {
        ranges.push((start, Some(cut)));
        start = Some(cut);
    }
    ranges.push((start, None));
    ranges
}

/// Splits the values `min..=max` into at most `pieces` ranges, the first
/// open below and the last open above.
pub(crate) fn split(min: i64, max: i64, pieces: i64) -> Vec<(Option<i64>, Option<i64>)> {
    let span = (max as i128) - (min as i128) + 1;
    let pieces = (pieces as i128).clamp(1, span.max(1));
    let mut bounds: Vec<i64> = (1..pieces)
        .map(|i| (min as i128 + span * i / pieces) as i64)
        .collect();
    bounds.dedup();
    open_ranges(bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_everything_once() {
        assert_eq!(
            split(1, 100, 4),
            vec![
                (None, Some(26)),
                (Some(26), Some(51)),
                (Some(51), Some(76)),
                (Some(76), None)
            ]
        );
        assert_eq!(split(5, 5, 4), vec![(None, None)]);
        assert_eq!(split(0, 2, 10).len(), 3);
        let extreme = split(i64::MIN, i64::MAX, 3);
        assert_eq!(extreme.len(), 3);
        assert_eq!(extreme[0].0, None);
        assert_eq!(extreme[2].1, None);
    }

    #[test]
    fn quantiles_follow_the_rows_not_the_span() {
        // 100 bounds over 1..=99 and one far outlier: even cuts by rows.
        let mut histogram: Vec<i64> = (1..=99).collect();
        histogram.push(1_000_000_000_000);
        assert_eq!(quantiles(&histogram, 4), vec![25, 50, 75]);
        assert_eq!(
            open_ranges(quantiles(&histogram, 2)),
            vec![(None, Some(50)), (Some(50), None)]
        );
        // More pieces than steps, and repeated bounds (a frequent value).
        assert_eq!(quantiles(&[1, 2, 3], 10), vec![2]);
        assert_eq!(quantiles(&[5, 5, 5, 5, 9], 4), vec![5]);
    }

    #[test]
    fn conditions_quote_and_bound() {
        let key = PartRange::Key {
            column: "Id\"x".into(),
            start: Some(10),
            end: None,
        };
        assert_eq!(key.condition().unwrap(), "\"Id\"\"x\" >= 10");
        let blocks = PartRange::Blocks {
            start: Some(8),
            end: Some(16),
        };
        assert_eq!(
            blocks.condition().unwrap(),
            "ctid >= '(8,0)'::tid AND ctid < '(16,0)'::tid"
        );
        assert_eq!(PartRange::Whole.condition(), None);
        let time = PartRange::Time {
            column: "ts".into(),
            time_type: TimeType::TimestampTz,
            start: Some(1),
            end: Some(2),
        };
        assert_eq!(
            time.condition().unwrap(),
            "\"ts\" >= _timescaledb_functions.to_timestamp(1) AND \"ts\" < _timescaledb_functions.to_timestamp(2)"
        );
        assert_eq!(
            TimeType::from_kind(time.kind()),
            Some(TimeType::TimestampTz)
        );
        assert_eq!(
            PartRange::Blocks {
                start: None,
                end: None
            }
            .condition(),
            None
        );
    }
}
