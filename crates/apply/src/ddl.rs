//! Schema changes captured on the source, replayed on the target at their
//! place in the stream.
//!
//! An event trigger on the source (installed by `pglive-migrate`) writes
//! each DDL command into the WAL as a transactional logical message with
//! the prefix [`ddl_message_prefix`]: the command tag, the query string as
//! the server received it, the role and `search_path` it ran under, and the
//! objects it touched. The message reaches the stream in commit order with
//! the rows, so a column added in a transaction is on the target before
//! that transaction's rows. A rolled-back command never arrives.
//!
//! The applier runs the command inside the batch's target transaction,
//! after every change before it, under the same role and `search_path`,
//! and records it in `pglive.apply_ddl` in that transaction: exactly once,
//! like the rows. `CONCURRENTLY` is left out (the target serves no
//! application yet, and a batch is one transaction). The batch commits at
//! the end of that source transaction, so a new enum value is usable by
//! the next one. A command that is not replayed (not on the list, run
//! inside a function, or failing on the target) stops apply with
//! [`crate::Error::DdlNotReplayed`] or [`crate::Error::DdlFailed`]; the
//! person running the migration decides with [`decide_ddl`]: replay it as
//! captured, or skip it (having run an equivalent on the target by hand).

use std::collections::HashMap;

use pglive_postgres::{Lsn, quote_ident, quote_literal};
use serde::Deserialize;
use tokio_postgres::Client;

use crate::error::{Error, Result, target};
use crate::statements;

/// The prefix of the logical messages that carry the DDL captured for
/// the migration whose stream is `stream_id`
/// ([`crate::ApplyOptions::stream_id`]): each migration captured from one
/// source gets its own copy of every command.
pub fn ddl_message_prefix(stream_id: &str) -> String {
    format!("pglive_ddl:{stream_id}")
}

/// Command tags replayed as captured. Commands that also write rows
/// (`CREATE TABLE AS`, `SELECT INTO`, materialized views) are not: their
/// rows would arrive twice, once made by the target and once streamed.
const REPLAYED_TAGS: &[&str] = &[
    "ALTER TABLE",
    "CREATE TABLE",
    "DROP TABLE",
    "CREATE INDEX",
    "ALTER INDEX",
    "DROP INDEX",
    "CREATE TYPE",
    "ALTER TYPE",
    "DROP TYPE",
    "CREATE DOMAIN",
    "ALTER DOMAIN",
    "DROP DOMAIN",
    "COMMENT",
    "GRANT",
    "REVOKE",
    "ALTER DEFAULT PRIVILEGES",
    "CREATE VIEW",
    "ALTER VIEW",
    "DROP VIEW",
    "CREATE SEQUENCE",
    "ALTER SEQUENCE",
    "DROP SEQUENCE",
    "CREATE SCHEMA",
    "ALTER SCHEMA",
    "DROP SCHEMA",
    "CREATE FUNCTION",
    "ALTER FUNCTION",
    "DROP FUNCTION",
    "CREATE PROCEDURE",
    "ALTER PROCEDURE",
    "DROP PROCEDURE",
    "CREATE TRIGGER",
    "ALTER TRIGGER",
    "DROP TRIGGER",
    "CREATE POLICY",
    "ALTER POLICY",
    "DROP POLICY",
    "CREATE RULE",
    "DROP RULE",
    "CREATE EXTENSION",
    "ALTER EXTENSION",
    "DROP EXTENSION",
    // Materialized views are not published: made or refreshed on the
    // target at the same place in the stream, from the same rows, they
    // hold what the source's hold.
    "CREATE MATERIALIZED VIEW",
    "ALTER MATERIALIZED VIEW",
    "DROP MATERIALIZED VIEW",
    "REFRESH MATERIALIZED VIEW",
];

/// Command tags about the source's own replication, which the target must
/// not copy (the migration's own publications change as tables appear).
const IGNORED_TAGS: &[&str] = &[
    "CREATE PUBLICATION",
    "ALTER PUBLICATION",
    "DROP PUBLICATION",
    "CREATE SUBSCRIPTION",
    "ALTER SUBSCRIPTION",
    "DROP SUBSCRIPTION",
];

/// One DDL command as the source's trigger captured it.
#[derive(Debug, Deserialize)]
pub(crate) struct Captured {
    /// The command tag (`ALTER TABLE`).
    pub tag: String,
    /// `current_query()`: the whole string the client sent (empty when
    /// the server has none, as for a background worker's command).
    #[serde(default)]
    pub query: String,
    /// The role it ran as.
    #[serde(default)]
    pub role: Option<String>,
    /// Its `search_path`.
    #[serde(default)]
    pub search_path: Option<String>,
    /// `statement_timestamp()`, which tells apart two sendings of the
    /// same query string in one transaction.
    #[serde(default)]
    pub at: String,
    /// The session's `standard_conforming_strings`: the query is read
    /// (split, replayed) as `on` has it.
    #[serde(default)]
    standard_conforming_strings: Option<String>,
    #[serde(default)]
    objects: Vec<TouchedObject>,
    #[serde(default)]
    dropped: Vec<DroppedObject>,
    /// The values the rows that existed got in columns of the altered
    /// tables that have one (`pg_attribute.attmissingval`, a column added
    /// with a default computed once).
    #[serde(default)]
    pub missing: Vec<MissingValue>,
    /// Set when the trigger could not describe the command.
    #[serde(default)]
    pub error: Option<String>,
}

/// An object a command created or altered.
#[derive(Debug, Deserialize)]
struct TouchedObject {
    schema: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    identity: Option<String>,
    #[serde(default)]
    in_extension: bool,
}

/// The value existing rows have in a column added with a default (see
/// [`Captured`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct MissingValue {
    /// The table, as `pg_event_trigger_ddl_commands` identifies it.
    pub table: String,
    /// The column.
    pub column: String,
    /// `attmissingval` as text.
    pub value: String,
}

/// An object a command dropped.
#[derive(Debug, Deserialize)]
struct DroppedObject {
    schema: Option<String>,
    #[serde(default)]
    temporary: bool,
    /// Its kind (`view`, `table`, …), when the capture said.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// Its name, when the capture said.
    #[serde(default)]
    name: Option<String>,
}

/// What to do with a captured command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Nothing: it only touched temporary objects, extension members or
    /// TimescaleDB's internals.
    Ignore,
    /// Run this statement.
    Replay(String),
    /// Stop: why, and the statement if it was found in the query.
    NotReplayed {
        reason: String,
        statement: Option<String>,
    },
}

impl Captured {
    /// Reads a message's content.
    pub fn parse(content: &[u8]) -> Result<Captured> {
        serde_json::from_slice(content).map_err(|e| {
            Error::Protocol(format!(
                "a captured schema change that is not pglive's: {e}"
            ))
        })
    }

    /// Which occurrences of the same command share a query string: the
    /// `ordinal`-th of them is the `ordinal`-th statement with its tag.
    /// `None` for a command an extension's script ran, which is no
    /// statement of the query string.
    pub fn sending(&self) -> Option<(String, String, String)> {
        let in_extension = !self.objects.is_empty() && self.objects.iter().all(|o| o.in_extension);
        (!in_extension).then(|| (self.query.clone(), self.at.clone(), self.tag.clone()))
    }

    /// The tables a command that makes a table from a query's rows
    /// (`CREATE TABLE AS`, `SELECT INTO`) created. Its rows reach the
    /// stream before it (the trigger fires at the command's end), so a
    /// table with rows is already carried when it arrives (see
    /// [`crate::Error::TableMissing`]); an empty one is not.
    pub fn tables_made_with_rows(&self) -> Vec<String> {
        self.tables_if(&["CREATE TABLE AS", "SELECT INTO"])
    }

    /// The tables the command altered (as identified on the source), whose
    /// new columns' values for existing rows are compared after it runs.
    pub fn altered_tables(&self) -> Vec<String> {
        self.tables_if(&["ALTER TABLE"])
    }

    /// The tables the command touched, when its tag is one of `tags`.
    fn tables_if(&self, tags: &[&str]) -> Vec<String> {
        if !tags.contains(&self.tag.as_str()) {
            return Vec::new();
        }
        self.objects
            .iter()
            .filter(|o| o.kind.as_deref() == Some("table"))
            .filter_map(|o| o.identity.clone())
            .collect()
    }

    /// What to do with the command, the `ordinal`-th with its tag in its
    /// query string; `internal_schemas` hold objects never replayed.
    pub fn disposition(&self, ordinal: usize, internal_schemas: &[String]) -> Disposition {
        let internal = |schema: &Option<String>| {
            schema.as_deref().is_some_and(|s| {
                s == "pg_temp"
                    || s.starts_with("pg_temp_")
                    || internal_schemas.iter().any(|i| i == s)
            })
        };
        let touched_only_internal = !self.objects.is_empty()
            && self
                .objects
                .iter()
                .all(|o| o.in_extension || internal(&o.schema));
        let dropped_only_internal = self.objects.is_empty()
            && !self.dropped.is_empty()
            && self
                .dropped
                .iter()
                .all(|o| o.temporary || internal(&o.schema));
        if touched_only_internal
            || dropped_only_internal
            || IGNORED_TAGS.contains(&self.tag.as_str())
        {
            return Disposition::Ignore;
        }
        let all = statements::split(&self.query);
        let with_tag = |tag: &str| -> Vec<&str> {
            all.iter()
                .copied()
                .filter(|s| statements::has_tag(s, tag) && statements::fires_ddl_triggers(s))
                .collect()
        };
        let mut candidates = with_tag(&self.tag);
        // TimescaleDB drops a continuous aggregate (`DROP MATERIALIZED
        // VIEW`, which it handles itself) through a `DROP VIEW` of its own.
        if candidates.is_empty() && self.tag == "DROP VIEW" {
            candidates = with_tag("DROP MATERIALIZED VIEW");
            // Among several, the one that names the dropped view (a plain
            // materialized view's drop has a DROP MATERIALIZED VIEW event
            // of its own, and counts among these).
            let named: Vec<&str> = candidates
                .iter()
                .copied()
                .filter(|s| {
                    self.dropped
                        .iter()
                        .filter(|d| d.kind.as_deref() == Some("view"))
                        .filter_map(|d| d.name.as_deref())
                        .any(|name| statements::names(s, name))
                })
                .collect();
            if named.len() == 1 {
                return Disposition::Replay(statements::without_concurrently(named[0]));
            }
        }
        let statement = candidates
            .get(ordinal)
            .map(|s| statements::without_concurrently(s));
        // Counted per transaction: with several transactions in one query
        // string, the count restarts in each, and which statement this is
        // cannot be told.
        if candidates.len() > 1 && all.iter().any(|s| statements::controls_transactions(s)) {
            return Disposition::NotReplayed {
                reason: format!(
                    "its query string holds several transactions and {} {} commands, so which one this is cannot be told: replay it by hand and `pglive ddl skip`",
                    candidates.len(),
                    self.tag
                ),
                statement: None,
            };
        }
        if let Some(error) = &self.error {
            return Disposition::NotReplayed {
                reason: format!("the capture trigger could not describe it ({error})"),
                statement,
            };
        }
        if matches!(self.tag.as_str(), "CREATE TABLE AS" | "SELECT INTO") {
            return Disposition::NotReplayed {
                reason: "its rows also arrive through the stream, so replaying it would copy them twice: create the table on the target without rows (`CREATE TABLE … AS … WITH NO DATA`), then `pglive ddl skip`".to_owned(),
                statement,
            };
        }
        if self.standard_conforming_strings.as_deref() == Some("off") {
            return Disposition::NotReplayed {
                reason: "it ran with standard_conforming_strings = off, under which backslashes in its strings mean what pglive's reading of the text does not: replay it by hand and `pglive ddl skip`".to_owned(),
                statement: None,
            };
        }
        if !REPLAYED_TAGS.contains(&self.tag.as_str()) {
            return Disposition::NotReplayed {
                reason: format!("{} is not replayed by pglive", self.tag),
                statement,
            };
        }
        match statement {
            Some(statement) => Disposition::Replay(statement),
            None => Disposition::NotReplayed {
                reason: "it ran inside another statement (a function or a DO block), whose text is not its own: replay it by hand and `pglive ddl skip`".to_owned(),
                statement: None,
            },
        }
    }
}

/// The target's event triggers that are no extension's, not pglive's (a
/// target that is another migration's source captures what is replayed),
/// not disabled and the session's to alter (a platform's own are left
/// alone), with how they are enabled (`O`, `R`, `A`).
const USER_EVENT_TRIGGERS: &str = "SELECT e.evtname::text, e.evtenabled::text
       FROM pg_catalog.pg_event_trigger e
      WHERE e.evtenabled <> 'D' AND e.evtname !~ '^pglive_'
        AND pg_catalog.pg_has_role(e.evtowner, 'MEMBER')
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                         WHERE d.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass
                           AND d.objid = e.oid AND d.deptype = 'e')";

/// A decision about a command apply stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdlDecision {
    /// Replay it as captured (after fixing what made it fail, or for a
    /// command pglive does not replay by itself).
    Retry,
    /// Do not replay it: an equivalent was run on the target by hand.
    Skip,
}

impl DdlDecision {
    fn outcome(self) -> &'static str {
        match self {
            DdlDecision::Retry => "retry",
            DdlDecision::Skip => "skip",
        }
    }
}

/// A captured command apply stopped at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingDdl {
    /// The commit LSN of its source transaction.
    pub lsn: Lsn,
    /// Which DDL command of that transaction (from 0).
    pub position: u32,
    /// Its command tag.
    pub tag: String,
    /// The statement, or the whole query string when the statement is not
    /// in it.
    pub command: String,
    /// Why it was not replayed.
    pub problem: String,
}

/// A captured command in `pglive.apply_ddl`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DdlRecord {
    /// The commit LSN of its source transaction.
    pub lsn: Lsn,
    /// Which DDL command of that transaction (from 0).
    pub position: u32,
    /// Its command tag.
    pub tag: String,
    /// The statement (or the query string it came in).
    pub command: String,
    /// `replayed`, `skipped`, `pending` (apply waits), or a decision not
    /// yet carried out (`retry`, `skip`).
    pub outcome: String,
    /// Why apply stopped at it, for a pending one.
    pub problem: Option<String>,
}

/// One command to run (or skip) inside a batch.
#[derive(Debug)]
pub(crate) struct DdlStep {
    pub lsn: Lsn,
    pub position: u32,
    pub tag: String,
    pub command: String,
    /// `None` when skipped by decision.
    pub run: Option<String>,
    pub role: Option<String>,
    pub search_path: Option<String>,
    /// Tables whose columns added by the command are checked: existing
    /// rows must get the values they got on the source (empty: no check,
    /// as after `pglive ddl retry`).
    pub check_tables: Vec<String>,
    /// The values existing rows got on the source.
    pub missing: Vec<MissingValue>,
    /// Whether the session runs with `session_replication_role = replica`
    /// (then switched to `origin` for the command).
    pub replica: bool,
}

/// A table's columns on the target: (table as identified, column, the
/// value existing rows have if the column has one, whether rows get a
/// value of their own: a default or an identity; a generated column's is
/// computed from the row, alike on both sides).
const COLUMNS_SQL: &str = "
    SELECT i, a.attname::text,
           CASE WHEN a.atthasmissing THEN a.attmissingval::text END,
           a.attidentity <> ''
           OR (a.attgenerated = '' AND EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef d
                                               WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum))
      FROM unnest($1::text[]) i
      JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(i)
     WHERE a.attnum > 0 AND NOT a.attisdropped";

impl DdlStep {
    /// Runs the command inside the open target transaction under its role
    /// and `search_path`, then records it. The command goes alone through
    /// the extended protocol, which refuses a string of several
    /// statements: whatever the splitter made of the source's query
    /// string, one statement runs, under the role it ran as.
    pub async fn perform(&self, client: &Client, stream_id: &str) -> Result<()> {
        let failed = |source: tokio_postgres::Error| Error::DdlFailed {
            pending: PendingDdl {
                lsn: self.lsn,
                position: self.position,
                tag: self.tag.clone(),
                command: self.command.clone(),
                problem: crate::error::describe(&source),
            },
            source,
        };
        if let Some(statement) = &self.run {
            // Event triggers do not fire under session_replication_role =
            // replica, and an extension may keep its catalog by them
            // (TimescaleDB forgets a dropped continuous aggregate or
            // hypertable in one): the command runs as it ran on the source.
            let replica = self.replica;
            // The target's own event triggers (an embedder's schema may
            // have the source's) are held off meanwhile: what they did on
            // the source (an audit row) arrives through the stream.
            let held: Vec<(String, String)> = match replica {
                false => Vec::new(),
                true => client
                    .query(USER_EVENT_TRIGGERS, &[])
                    .await
                    .map_err(failed)?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
            };
            let mut prelude = String::new();
            let mut restore = String::from("RESET ROLE; SET search_path = pg_catalog;");
            if replica {
                prelude.push_str("SET session_replication_role = origin;");
                restore.push_str("SET session_replication_role = replica;");
            }
            for (name, enabled) in &held {
                let name = quote_ident(name);
                prelude.push_str(&format!("ALTER EVENT TRIGGER {name} DISABLE;"));
                let how = match enabled.as_str() {
                    "R" => " REPLICA",
                    "A" => " ALWAYS",
                    _ => "",
                };
                restore.push_str(&format!("ALTER EVENT TRIGGER {name} ENABLE{how};"));
            }
            if let Some(path) = &self.search_path {
                prelude.push_str(&format!(
                    "SELECT pg_catalog.set_config('search_path', {}, false);",
                    quote_literal(path)
                ));
            }
            if let Some(role) = &self.role {
                prelude.push_str(&format!("SET ROLE {};", quote_ident(role)));
            }
            if !prelude.is_empty() {
                client.batch_execute(&prelude).await.map_err(failed)?;
            }
            let before = match self.check_tables.is_empty() {
                true => Vec::new(),
                false => client
                    .query(COLUMNS_SQL, &[&self.check_tables])
                    .await
                    .map_err(failed)?,
            };
            client
                .execute(statement.as_str(), &[])
                .await
                .map_err(failed)?;
            client.batch_execute(&restore).await.map_err(failed)?;
            if !self.check_tables.is_empty() {
                self.check_new_columns(client, &before).await?;
            }
        }
        let outcome = if self.run.is_some() {
            "replayed"
        } else {
            "skipped"
        };
        client
            .execute(
                "INSERT INTO pglive.apply_ddl (stream_id, lsn, position, tag, command, outcome)
                 VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6)
                 ON CONFLICT (stream_id, lsn, position)
                 DO UPDATE SET outcome = EXCLUDED.outcome, problem = NULL, recorded_at = now()",
                &[
                    &stream_id,
                    &self.lsn.to_string(),
                    &(self.position as i32),
                    &self.tag,
                    &self.command,
                    &outcome,
                ],
            )
            .await
            .map_err(target("recording a replayed schema change"))?;
        Ok(())
    }
}

impl DdlStep {
    /// Stops apply when a column the command added got, in rows that
    /// existed, other values on the target than on the source: a default
    /// computed once (`now()`) was computed anew, or one computed per row
    /// (`random()`, a sequence) rewrote the table on both sides, whose
    /// values the stream does not carry.
    async fn check_new_columns(
        &self,
        client: &Client,
        before: &[tokio_postgres::Row],
    ) -> Result<()> {
        let existed = |table: &str, column: &str| {
            before
                .iter()
                .any(|r| r.get::<_, &str>(0) == table && r.get::<_, &str>(1) == column)
        };
        let after = client
            .query(COLUMNS_SQL, &[&self.check_tables])
            .await
            .map_err(target("reading the columns a schema change added"))?;
        for row in &after {
            let (table, column): (&str, &str) = (row.get(0), row.get(1));
            let (value, has_default): (Option<String>, bool) = (row.get(2), row.get(3));
            if existed(table, column) || !has_default {
                continue;
            }
            let on_source = self
                .missing
                .iter()
                .find(|m| m.table == table && m.column == column)
                .map(|m| m.value.as_str());
            if on_source.is_some() && on_source == value.as_deref() {
                continue;
            }
            let has_rows: bool = client
                .query_one(
                    // An identity of pg_event_trigger_ddl_commands is SQL.
                    &format!("SELECT EXISTS (SELECT 1 FROM {table} LIMIT 1)"),
                    &[],
                )
                .await
                .map_err(target("looking for rows in an altered table"))?
                .get(0);
            if !has_rows {
                continue;
            }
            let source_values = match on_source {
                Some(v) => format!("all got {v} on the source"),
                None => "got a value per row on the source (the table was rewritten)".to_owned(),
            };
            return Err(Error::DdlNotReplayed {
                pending: PendingDdl {
                    lsn: self.lsn,
                    position: self.position,
                    tag: self.tag.clone(),
                    command: self.command.clone(),
                    problem: format!(
                        "the rows {table} held before it get their value of the new column {column:?} from its default, computed again on the target ({}), and {source_values}, which the stream does not carry: replay it by hand so that they match (for a default computed once: add the column with that value as its default, then SET DEFAULT back) and `pglive ddl skip`, or `pglive ddl retry` to keep the target's values",
                        value.as_deref().unwrap_or("a value per row")
                    ),
                },
            });
        }
        Ok(())
    }
}

/// The decisions taken about `stream_id`'s commands and not yet carried
/// out, by (transaction commit LSN, position).
pub(crate) async fn decisions(
    client: &Client,
    stream_id: &str,
) -> Result<HashMap<(Lsn, u32), DdlDecision>> {
    let rows = client
        .query(
            "SELECT lsn::text, position, outcome FROM pglive.apply_ddl
              WHERE stream_id = $1 AND outcome IN ('retry', 'skip')",
            &[&stream_id],
        )
        .await
        .map_err(target("reading pglive.apply_ddl"))?;
    let mut decisions = HashMap::new();
    for row in rows {
        let lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::Protocol(format!("pglive.apply_ddl: {e}")))?;
        let position: i32 = row.get(1);
        let decision = match row.get::<_, &str>(2) {
            "retry" => DdlDecision::Retry,
            _ => DdlDecision::Skip,
        };
        decisions.insert((lsn, position as u32), decision);
    }
    Ok(decisions)
}

/// Records that apply waits at `pending` (it shows in [`ddl_log`] as
/// `pending` until [`decide_ddl`]); a command that failed again after a
/// `retry` waits for a new decision.
pub async fn record_pending_ddl(
    client: &Client,
    stream_id: &str,
    pending: &PendingDdl,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO pglive.apply_ddl (stream_id, lsn, position, tag, command, outcome, problem)
             VALUES ($1, $2::text::pg_lsn, $3, $4, $5, 'pending', $6)
             ON CONFLICT (stream_id, lsn, position) DO UPDATE
                SET tag = EXCLUDED.tag, command = EXCLUDED.command, problem = EXCLUDED.problem,
                    outcome = 'pending', recorded_at = now()",
            &[
                &stream_id,
                &pending.lsn.to_string(),
                &(pending.position as i32),
                &pending.tag,
                &pending.command,
                &pending.problem,
            ],
        )
        .await
        .map_err(target("recording the schema change apply waits at"))?;
    Ok(())
}

/// Decides about the command `stream_id`'s apply waits at; returns it, or
/// `None` when apply waits at none.
pub async fn decide_ddl(
    client: &Client,
    stream_id: &str,
    decision: DdlDecision,
) -> Result<Option<DdlRecord>> {
    let rows = client
        .query(
            &format!(
                "UPDATE pglive.apply_ddl SET outcome = '{}', recorded_at = now()
                  WHERE stream_id = $1 AND outcome = 'pending'
              RETURNING {RECORD_COLUMNS}",
                decision.outcome()
            ),
            &[&stream_id],
        )
        .await;
    match rows {
        Ok(rows) => Ok(rows.first().map(record).transpose()?),
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(None),
        Err(e) => Err(target("recording a decision in pglive.apply_ddl")(e)),
    }
}

/// Every captured command of `stream_id` the applier met, in stream order
/// (empty before apply ever ran).
pub async fn ddl_log(client: &Client, stream_id: &str) -> Result<Vec<DdlRecord>> {
    let rows = client
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM pglive.apply_ddl
                  WHERE stream_id = $1 ORDER BY lsn, position"
            ),
            &[&stream_id],
        )
        .await;
    match rows {
        Ok(rows) => rows.iter().map(record).collect(),
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(Vec::new()),
        Err(e) => Err(target("reading pglive.apply_ddl")(e)),
    }
}

const RECORD_COLUMNS: &str = "lsn::text, position, tag, command, outcome, problem";

fn record(row: &tokio_postgres::Row) -> Result<DdlRecord> {
    Ok(DdlRecord {
        lsn: row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::Protocol(format!("pglive.apply_ddl: {e}")))?,
        position: row.get::<_, i32>(1) as u32,
        tag: row.get(2),
        command: row.get(3),
        outcome: row.get(4),
        problem: row.get(5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(tag: &str, query: &str) -> Captured {
        Captured::parse(
            serde_json::json!({"tag": tag, "query": query, "at": "t",
                "objects": [{"schema": "public", "in_extension": false}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_nth_statement_with_the_tag_is_replayed() {
        let c = captured(
            "ALTER TABLE",
            "ALTER TABLE t ADD a int; INSERT INTO t VALUES (1); ALTER TABLE t ADD b int;",
        );
        assert_eq!(
            c.disposition(0, &[]),
            Disposition::Replay("ALTER TABLE t ADD a int".into())
        );
        assert_eq!(
            c.disposition(1, &[]),
            Disposition::Replay("ALTER TABLE t ADD b int".into())
        );
        assert!(matches!(
            c.disposition(2, &[]),
            Disposition::NotReplayed {
                statement: None,
                ..
            }
        ));
    }

    #[test]
    fn rows_written_by_ddl_are_not_replayed_and_temporary_objects_are_ignored() {
        let c = captured("CREATE TABLE AS", "CREATE TABLE x AS SELECT 1");
        assert!(matches!(
            c.disposition(0, &[]),
            Disposition::NotReplayed { .. }
        ));
        let temp = Captured::parse(
            br#"{"tag": "CREATE TABLE", "query": "CREATE TEMP TABLE x (a int)", "objects": [{"schema": "pg_temp"}]}"#,
        )
        .unwrap();
        assert_eq!(temp.disposition(0, &[]), Disposition::Ignore);
        let dropped = Captured::parse(
            br#"{"tag": "DROP TABLE", "query": "DROP TABLE x", "dropped": [{"schema": "pg_temp", "temporary": true}]}"#,
        )
        .unwrap();
        assert_eq!(dropped.disposition(0, &[]), Disposition::Ignore);
    }

    #[test]
    fn text_read_another_way_is_not_replayed() {
        let c = Captured::parse(
            br#"{"tag": "COMMENT", "query": "COMMENT ON TABLE t IS 'a\\'; DROP TABLE u; --'", "standard_conforming_strings": "off", "objects": [{"schema": "public"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            c.disposition(0, &[]),
            Disposition::NotReplayed {
                statement: None,
                ..
            }
        ));
    }

    #[test]
    fn a_continuous_aggregate_dropped_by_timescaledb_is_dropped_as_written() {
        // TimescaleDB reports it as a DROP VIEW of the aggregate's view.
        let c = Captured::parse(
            br#"{"tag": "DROP VIEW", "query": "DROP MATERIALIZED VIEW m_daily CASCADE;", "dropped": [{"schema": "public"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.disposition(0, &[]),
            Disposition::Replay("DROP MATERIALIZED VIEW m_daily CASCADE".into())
        );
        // With a plain materialized view dropped first in the same string,
        // the aggregate's own statement (told by the dropped view's name).
        let c = Captured::parse(
            br#"{"tag": "DROP VIEW", "query": "DROP MATERIALIZED VIEW plain_mv; DROP MATERIALIZED VIEW \"M_Daily\";",
                 "dropped": [{"schema": "public", "type": "view", "name": "M_Daily"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.disposition(0, &[]),
            Disposition::Replay("DROP MATERIALIZED VIEW \"M_Daily\"".into())
        );
        // A DROP VIEW of its own is still the view's.
        let c = captured("DROP VIEW", "DROP MATERIALIZED VIEW mv; DROP VIEW v;");
        assert_eq!(
            c.disposition(0, &[]),
            Disposition::Replay("DROP VIEW v".into())
        );
    }

    #[test]
    fn concurrently_is_left_out() {
        let c = captured("CREATE INDEX", "CREATE INDEX CONCURRENTLY i ON t (a)");
        assert_eq!(
            c.disposition(0, &[]),
            Disposition::Replay("CREATE INDEX  i ON t (a)".into())
        );
    }
}
