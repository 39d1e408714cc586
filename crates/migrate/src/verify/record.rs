//! A verification's parts and their figures, kept in the target's state
//! (`pglive.verify_run`, `pglive.verify_part`) as they are compared, so a
//! verification that stopped continues where it was.

use pglive_postgres::{QualifiedName, StateSchema};
use pglive_snapshot::PartRange;
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result};

/// The verification's tables, by version (see [`StateSchema`]).
const STATE: StateSchema = StateSchema {
    component: "verify",
    steps: &[VERSION_1],
};

const VERSION_1: &str = "
CREATE TABLE IF NOT EXISTS pglive.verify_run (
    migration text PRIMARY KEY,
    full_checksums boolean NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS pglive.verify_part (
    migration text NOT NULL,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    part int NOT NULL,
    key_column text,
    range_start int8,
    range_end int8,
    estimated_bytes int8 NOT NULL,
    source_rows int8,
    target_rows int8,
    source_sum text,
    target_sum text,
    compared_at text,
    PRIMARY KEY (migration, table_schema, table_name, part)
);";

/// One part of a verification: a key range of one table (or all of it),
/// planned as the copy plans its parts.
pub(crate) use pglive_snapshot::Part as PartPlan;

/// One part's figures on both sides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// The source's checksum, with full checksums.
    pub source_sum: Option<String>,
    /// The target's checksum, with full checksums.
    pub target_sum: Option<String>,
}

impl Figures {
    /// Whether both sides agree.
    pub fn equal(&self) -> bool {
        self.source_rows == self.target_rows && self.source_sum == self.target_sum
    }
}

/// A recorded verification: its parts, those compared with their figures.
pub(crate) struct Recorded {
    /// Whether it compares checksums.
    pub full: bool,
    /// Every part, with its figures once compared.
    pub parts: Vec<(PartPlan, Option<Figures>)>,
}

/// Creates or upgrades the tables.
pub(crate) async fn create_tables(client: &Client) -> Result<()> {
    STATE.upgrade(client).await?;
    Ok(())
}

/// Starts verification `name` over, with `parts` to compare.
pub(crate) async fn start(
    client: &Client,
    name: &str,
    full: bool,
    parts: &[PartPlan],
) -> Result<()> {
    client
        .batch_execute("BEGIN")
        .await
        .doing("recording the verification's parts")?;
    let written = async {
        client
            .execute(
                "DELETE FROM pglive.verify_part WHERE migration = $1",
                &[&name],
            )
            .await?;
        client
            .execute(
                "INSERT INTO pglive.verify_run (migration, full_checksums) VALUES ($1, $2)
                 ON CONFLICT (migration) DO UPDATE
                   SET full_checksums = $2, started_at = now(), finished_at = NULL",
                &[&name, &full],
            )
            .await?;
        insert(client, name, parts).await
    }
    .await;
    let end = if written.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    client
        .batch_execute(end)
        .await
        .doing("recording the verification's parts")?;
    written.doing("recording the verification's parts")?;
    Ok(())
}

/// Adds `parts` (of tables that appeared since) to verification `name`.
pub(crate) async fn add(client: &Client, name: &str, parts: &[PartPlan]) -> Result<()> {
    insert(client, name, parts)
        .await
        .doing("recording the verification's new parts")?;
    Ok(())
}

async fn insert(
    client: &Client,
    name: &str,
    parts: &[PartPlan],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let (mut schemas, mut tables, mut numbers) = (vec![], vec![], vec![]);
    let (mut columns, mut starts, mut ends, mut bytes) = (vec![], vec![], vec![], vec![]);
    for part in parts {
        let (column, start, end) = match &part.range {
            PartRange::Key { column, start, end } => (Some(column.clone()), *start, *end),
            _ => (None, None, None),
        };
        schemas.push(part.table.schema.clone());
        tables.push(part.table.name.clone());
        numbers.push(part.number);
        columns.push(column);
        starts.push(start);
        ends.push(end);
        bytes.push(part.estimated_bytes);
    }
    client
        .execute(
            "INSERT INTO pglive.verify_part
               (migration, table_schema, table_name, part, key_column, range_start, range_end, estimated_bytes)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::int8[], $7::int8[], $8::int8[])",
            &[&name, &schemas, &tables, &numbers, &columns, &starts, &ends, &bytes],
        )
        .await
}

/// Records one part's figures, read at `point`.
pub(crate) async fn save(
    client: &Client,
    name: &str,
    part: &PartPlan,
    figures: &Figures,
    point: Option<&str>,
) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.verify_part
                SET source_rows = $5, target_rows = $6, source_sum = $7, target_sum = $8,
                    compared_at = coalesce($9, now()::text)
              WHERE migration = $1 AND table_schema = $2 AND table_name = $3 AND part = $4",
            &[
                &name,
                &part.table.schema,
                &part.table.name,
                &part.number,
                &figures.source_rows,
                &figures.target_rows,
                &figures.source_sum,
                &figures.target_sum,
                &point,
            ],
        )
        .await
        .doing("recording a verified part")?;
    Ok(())
}

/// Marks verification `name` finished: the next one starts over.
pub(crate) async fn finish(client: &Client, name: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.verify_run SET finished_at = now() WHERE migration = $1",
            &[&name],
        )
        .await
        .doing("recording the verification's end")?;
    Ok(())
}

/// The stopped verification `name` with its parts, or why there is none
/// to continue.
pub(crate) async fn stopped(client: &Client, name: &str) -> Result<Recorded> {
    let nothing = |reason: &str| Error::VerifyResume {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let run = match client
        .query_opt(
            "SELECT full_checksums, finished_at IS NOT NULL FROM pglive.verify_run WHERE migration = $1",
            &[&name],
        )
        .await
    {
        Ok(row) => row,
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => None,
        Err(e) => return Err(e).doing("reading pglive.verify_run"),
    };
    let Some(run) = run else {
        return Err(nothing("the target records no verification of it"));
    };
    if run.get::<_, bool>(1) {
        return Err(nothing(
            "its last verification finished; run it again without --resume",
        ));
    }
    let parts = client
        .query(
            "SELECT table_schema, table_name, part, key_column, range_start, range_end, estimated_bytes,
                    source_rows, target_rows, source_sum, target_sum
               FROM pglive.verify_part WHERE migration = $1 ORDER BY estimated_bytes DESC, table_schema, table_name, part",
            &[&name],
        )
        .await
        .doing("reading pglive.verify_part")?
        .iter()
        .map(|r| {
            let range = match r.get::<_, Option<String>>(3) {
                Some(column) => PartRange::Key {
                    column,
                    start: r.get(4),
                    end: r.get(5),
                },
                None => PartRange::Whole,
            };
            let plan = PartPlan {
                table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                number: r.get(2),
                range,
                estimated_bytes: r.get(6),
            };
            let figures = r.get::<_, Option<i64>>(7).map(|source_rows| Figures {
                source_rows,
                target_rows: r.get(8),
                source_sum: r.get(9),
                target_sum: r.get(10),
            });
            (plan, figures)
        })
        .collect();
    Ok(Recorded {
        full: run.get(0),
        parts,
    })
}

/// Forgets migration `name`'s verifications (with the migration).
pub(crate) async fn remove(client: &Client, name: &str) -> Result<()> {
    for sql in [
        "DELETE FROM pglive.verify_part WHERE migration = $1",
        "DELETE FROM pglive.verify_run WHERE migration = $1",
    ] {
        match client.execute(sql, &[&name]).await {
            Ok(_) => {}
            Err(e) if e.code().map(|c| c.code()) == Some("42P01") => return Ok(()),
            Err(e) => return Err(e).doing("forgetting the migration's verifications"),
        }
    }
    Ok(())
}
