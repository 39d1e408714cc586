//! What a TimescaleDB database holds beyond its tables: hypertables (their
//! dimensions, chunks' schema and name prefix, compression settings),
//! continuous aggregates and policy jobs, and the SQL that makes the same
//! on a target.
//!
//! `pg_dump` sees a hypertable as a plain table with its chunks as
//! inheritance children in TimescaleDB's internal schemas, and a continuous
//! aggregate as a view over an internal table: both are left out of the
//! dump ([`Timescale::pg_dump_exclusions`]) and made on the target through
//! TimescaleDB's own functions instead.

use tokio_postgres::GenericClient;

use crate::catalog::Table;
use crate::error::{Result, query};
use pglive_postgres::{QualifiedName, quote_ident, quote_literal};

/// One partitioning dimension of a TimescaleDB hypertable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimension {
    /// The column.
    pub column: String,
    /// The column's type.
    pub column_type: String,
    /// The chunk interval as SQL text (an interval, or an integer for
    /// integer time columns); `None` for a space dimension.
    pub interval: Option<String>,
    /// The number of hash partitions of a space dimension.
    pub partitions: Option<i32>,
}

/// How a hypertable's chunks are compressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    /// `timescaledb.compress_segmentby` (empty: none).
    pub segment_by: String,
    /// `timescaledb.compress_orderby` (empty: TimescaleDB's default).
    pub order_by: String,
}

/// A TimescaleDB hypertable: the target must get `create_hypertable` before
/// the data (see [`Hypertable::create_sql`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hypertable {
    /// The hypertable.
    pub name: QualifiedName,
    /// The time dimension first, then any space dimension.
    pub dimensions: Vec<Dimension>,
    /// Compression, when enabled.
    pub compression: Option<Compression>,
}

impl Hypertable {
    /// The statements that make the same (empty) table a hypertable on the
    /// target: `create_hypertable` for the time dimension (without default
    /// indexes: the source's indexes come with the schema), `add_dimension`
    /// for each further one, and its compression settings.
    pub fn create_sql(&self) -> String {
        let table = quote_literal(&self.name.quoted());
        let mut sql = String::new();
        for (i, d) in self.dimensions.iter().enumerate() {
            let column = quote_literal(&d.column);
            let interval = d.interval.as_deref().map(interval_sql);
            match (i, interval, d.partitions) {
                (0, Some(iv), _) => sql.push_str(&format!(
                    "SELECT create_hypertable({table}, {column}, chunk_time_interval => {iv}, \
                     create_default_indexes => false);\n"
                )),
                (0, None, _) => sql.push_str(&format!(
                    "SELECT create_hypertable({table}, {column}, create_default_indexes => false);\n"
                )),
                (_, _, Some(n)) => sql.push_str(&format!(
                    "SELECT add_dimension({table}, {column}, number_partitions => {n});\n"
                )),
                (_, Some(iv), None) => sql.push_str(&format!(
                    "SELECT add_dimension({table}, {column}, chunk_time_interval => {iv});\n"
                )),
                (_, None, None) => {}
            }
        }
        sql.push_str(&self.compression_sql().unwrap_or_default());
        sql
    }

    /// The statement that gives the table its compression settings, when
    /// it has any.
    pub fn compression_sql(&self) -> Option<String> {
        let c = self.compression.as_ref()?;
        let mut sql = format!(
            "ALTER TABLE {} SET (timescaledb.compress, timescaledb.compress_segmentby = {}",
            self.name.quoted(),
            quote_literal(&c.segment_by)
        );
        if !c.order_by.is_empty() {
            sql.push_str(&format!(
                ", timescaledb.compress_orderby = {}",
                quote_literal(&c.order_by)
            ));
        }
        sql.push_str(");\n");
        Some(sql)
    }
}

/// An integer or an interval setting as SQL.
fn interval_sql(value: &str) -> String {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        value.to_owned()
    } else {
        format!("INTERVAL {}", quote_literal(value))
    }
}

/// A continuous aggregate: a view the target gets through `CREATE
/// MATERIALIZED VIEW … WITH (timescaledb.continuous)` from its query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContinuousAggregate {
    /// The view.
    pub name: QualifiedName,
    /// Its query, every name schema-qualified.
    pub query: String,
    /// Whether it shows only materialized rows (no real-time aggregation).
    pub materialized_only: bool,
    /// The role that owns it.
    pub owner: String,
    /// The `GRANT` statements of its privileges other than its owner's,
    /// as the source's server spelled them.
    pub grants: Vec<String>,
    /// Its comment.
    pub comment: Option<String>,
}

impl ContinuousAggregate {
    /// What `pg_dump` would have restored for it, had it been able to:
    /// its owner (with `owner`), its privileges (with `privileges`) and
    /// its comment, to run once it exists on the target.
    pub fn attributes_sql(&self, owner: bool, privileges: bool) -> Vec<String> {
        let name = self.name.quoted();
        let mut statements = Vec::new();
        if owner {
            statements.push(format!(
                "ALTER MATERIALIZED VIEW {name} OWNER TO {}",
                quote_ident(&self.owner)
            ));
        }
        if privileges {
            statements.extend(self.grants.iter().cloned());
        }
        if let Some(comment) = &self.comment {
            statements.push(format!(
                "COMMENT ON VIEW {name} IS {}",
                quote_literal(comment)
            ));
        }
        statements
    }

    /// The statement that creates it, empty, on the target.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE MATERIALIZED VIEW {} WITH (timescaledb.continuous, \
             timescaledb.materialized_only = {}) AS {} WITH NO DATA",
            self.name.quoted(),
            self.materialized_only,
            self.query.trim().trim_end_matches(';')
        )
    }

    /// The statement that gives it the source's `materialized_only`.
    pub fn materialized_only_sql(&self) -> String {
        format!(
            "ALTER MATERIALIZED VIEW {} SET (timescaledb.materialized_only = {})",
            self.name.quoted(),
            self.materialized_only
        )
    }

    /// The statement that materializes it from `start` (an SQL expression
    /// of its time type) on: the buckets wholly after `start` are computed
    /// from the data below it, those before are left as they are.
    pub fn refresh_sql(&self, start: &str) -> String {
        format!(
            "CALL refresh_continuous_aggregate({}, {start}, NULL)",
            quote_literal(&self.name.quoted())
        )
    }
}

/// A TimescaleDB job (a policy, or a user procedure run on a schedule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its id (`_timescaledb_config.bgw_job.id`) in the database it was read from.
    pub id: i32,
    /// The procedure it runs.
    pub procedure: QualifiedName,
    /// The hypertable or continuous aggregate of a policy.
    pub relation: Option<QualifiedName>,
    /// `schedule_interval`, as text.
    pub schedule_interval: String,
    /// `max_runtime`, as text.
    pub max_runtime: String,
    /// `max_retries`.
    pub max_retries: i32,
    /// `retry_period`, as text.
    pub retry_period: String,
    /// Whether it runs on its schedule.
    pub scheduled: bool,
    /// Its configuration (JSON), without the source's hypertable ids.
    pub config: Option<String>,
}

/// The keys of a policy's configuration that name the source's own
/// (internal) hypertable ids: the target's are different.
const ID_KEYS: [&str; 2] = ["hypertable_id", "mat_hypertable_id"];

impl Job {
    /// Whether it is one of TimescaleDB's own policies.
    fn policy(&self) -> Option<&str> {
        (self.procedure.schema == "_timescaledb_functions").then_some(self.procedure.name.as_str())
    }

    /// The configuration value of `key`, if any.
    fn setting(&self, key: &str) -> Option<serde_json::Value> {
        self.config
            .as_deref()
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|c| c.get(key).cloned())
    }

    /// The configuration value of `key` as an SQL argument.
    fn argument(&self, key: &str) -> String {
        match self.setting(key) {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) => interval_sql(&s),
            _ => "NULL".to_owned(),
        }
    }

    /// The statement that creates the job on the target, returning its id
    /// (`job`), then paused and configured as on the source by
    /// [`Job::configure_sql`]; `None` for a policy this version of pglive
    /// does not know.
    pub fn create_sql(&self) -> Option<String> {
        let relation = self
            .relation
            .as_ref()
            .map(|r| quote_literal(&r.quoted()))
            .unwrap_or_else(|| "NULL".to_owned());
        let has = |key: &str| self.setting(key).is_some_and(|v| !v.is_null());
        let call = match self.policy() {
            None => format!(
                "add_job({}::regproc, {}, config => {}, scheduled => false)",
                quote_literal(&self.procedure.quoted()),
                interval_sql(&self.schedule_interval),
                self.config
                    .as_deref()
                    .map(|c| format!("{}::jsonb", quote_literal(c)))
                    .unwrap_or_else(|| "NULL".to_owned())
            ),
            Some("policy_retention") if has("drop_created_before") => format!(
                "add_retention_policy({relation}, drop_created_before => {})",
                self.argument("drop_created_before")
            ),
            Some("policy_retention") => format!(
                "add_retention_policy({relation}, drop_after => {})",
                self.argument("drop_after")
            ),
            Some("policy_compression") if has("compress_created_before") => format!(
                "add_compression_policy({relation}, compress_created_before => {})",
                self.argument("compress_created_before")
            ),
            Some("policy_compression") => format!(
                "add_compression_policy({relation}, compress_after => {})",
                self.argument("compress_after")
            ),
            Some("policy_refresh_continuous_aggregate") => format!(
                "add_continuous_aggregate_policy({relation}, start_offset => {}, end_offset => {}, \
                 schedule_interval => {})",
                self.argument("start_offset"),
                self.argument("end_offset"),
                interval_sql(&self.schedule_interval)
            ),
            Some("policy_reorder") => format!(
                "add_reorder_policy({relation}, {})",
                quote_literal(
                    self.setting("index_name")
                        .as_ref()
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                )
            ),
            Some(_) => return None,
        };
        Some(format!("SELECT {call} AS job"))
    }

    /// The statement that makes target job `$1` run like this one, paused:
    /// its schedule, limits and configuration (keeping the target's own
    /// hypertable ids).
    pub fn configure_sql(&self) -> String {
        let config = match &self.config {
            Some(c) => format!(
                "{}::jsonb || (SELECT coalesce(jsonb_object_agg(key, value), '{{}}') \
                   FROM jsonb_each(coalesce(j.config, '{{}}')) WHERE key IN ({}))",
                quote_literal(c),
                ID_KEYS.map(quote_literal).join(", ")
            ),
            None => "NULL".to_owned(),
        };
        format!(
            "SELECT alter_job(j.id, schedule_interval => {}, max_runtime => {}, \
                    max_retries => {}, retry_period => {}, scheduled => false, config => {config}) \
               FROM _timescaledb_config.bgw_job j WHERE j.id = $1",
            interval_sql(&self.schedule_interval),
            interval_sql(&self.max_runtime),
            self.max_retries,
            interval_sql(&self.retry_period),
        )
    }

    /// Whether `other` (read from another database) is the same job: the
    /// same procedure for the same relation.
    pub fn same_as(&self, other: &Job) -> bool {
        self.procedure == other.procedure && self.relation == other.relation
    }

    /// A name for messages: the procedure and its relation.
    pub fn describe(&self) -> String {
        match &self.relation {
            Some(r) => format!("{} of {r}", self.procedure.name),
            None => self.procedure.to_string(),
        }
    }
}

/// What the source's TimescaleDB holds (all empty without the extension).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timescale {
    /// The extension's version; `None` when it is not installed.
    pub version: Option<String>,
    /// The hypertables among the selected tables.
    pub hypertables: Vec<Hypertable>,
    /// The continuous aggregates on them, those others depend on first.
    pub continuous_aggregates: Vec<ContinuousAggregate>,
    /// The jobs (TimescaleDB's own background jobs, below id 1000, left out).
    pub jobs: Vec<Job>,
}

impl Timescale {
    /// Reads what TimescaleDB holds for the selected `tables`, when the
    /// extension (`version`) is installed.
    pub(crate) async fn read(
        client: &impl GenericClient,
        version: Option<&str>,
        tables: &[Table],
    ) -> Result<Timescale> {
        let Some(version) = version else {
            return Ok(Timescale::default());
        };
        let selected = |name: &QualifiedName| tables.iter().any(|t| &t.name == name);
        let mut hypertables = read_hypertables(client).await?;
        hypertables.retain(|h| selected(&h.name));
        // An aggregate on a selected hypertable, or on such an aggregate
        // (those come first).
        let mut continuous_aggregates: Vec<ContinuousAggregate> = Vec::new();
        for (aggregate, source) in read_continuous_aggregates(client).await? {
            if selected(&source) || continuous_aggregates.iter().any(|c| c.name == source) {
                continuous_aggregates.push(aggregate);
            }
        }
        let mut jobs = read_jobs(client).await?;
        jobs.retain(|j| match &j.relation {
            Some(r) => selected(r) || continuous_aggregates.iter().any(|c| &c.name == r),
            None => true,
        });
        Ok(Timescale {
            version: Some(version.to_owned()),
            hypertables,
            continuous_aggregates,
            jobs,
        })
    }
}

/// Whether the database `client` is connected to has TimescaleDB.
async fn installed(client: &impl GenericClient) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .map_err(query("looking for TimescaleDB"))?
        .is_some())
}

/// The hypertables of the database `client` is connected to (none without
/// the extension).
pub async fn hypertable_names(
    client: &impl GenericClient,
) -> Result<std::collections::HashSet<QualifiedName>> {
    Ok(chunk_layout(client)
        .await?
        .map(|layout| layout.hypertables.into_iter().map(|h| h.0).collect())
        .unwrap_or_default())
}

/// Where a TimescaleDB database keeps its chunks: each hypertable (user
/// ones and TimescaleDB's own) with its chunks' schema and name prefix, and
/// TimescaleDB's own schemas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkLayout {
    /// (hypertable, chunk schema, chunk name prefix).
    pub hypertables: Vec<(QualifiedName, String, String)>,
    /// TimescaleDB's own schemas (`_timescaledb_internal`, `_timescaledb_catalog`, …).
    pub internal_schemas: Vec<String>,
}

/// The [`ChunkLayout`] of the database `client` is connected to; `None`
/// without the extension. Cheap: two small catalog reads.
pub async fn chunk_layout(client: &impl GenericClient) -> Result<Option<ChunkLayout>> {
    if !installed(client).await? {
        return Ok(None);
    }
    let hypertables = client
        .query(
            "SELECT schema_name::text, table_name::text, associated_schema_name::text, \
                    associated_table_prefix::text \
               FROM _timescaledb_catalog.hypertable ORDER BY id",
            &[],
        )
        .await
        .map_err(query("reading TimescaleDB hypertables"))?
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                r.get(2),
                r.get(3),
            )
        })
        .collect();
    Ok(Some(ChunkLayout {
        hypertables,
        internal_schemas: internal_schemas(client).await?,
    }))
}

/// How a dump of a TimescaleDB database is made and restored differently.
#[derive(Debug, Default)]
pub(crate) struct DumpAdjustments {
    /// `pg_dump` arguments that leave out TimescaleDB's chunks and internal
    /// relations and the views of continuous aggregates.
    pub exclusions: Vec<String>,
    /// Views and materialized views built on continuous aggregates (also
    /// through other views): `pg_class` OID, schema and name. Restored
    /// after the aggregates, which the target makes itself.
    pub after_aggregates: Vec<(u32, String, String)>,
    /// The indexes post-data builds on those (`pg_class` OID, schema, name).
    pub indexes_on_after_aggregates: Vec<(u32, String, String)>,
    /// Other objects post-data builds on those, such as triggers (catalog
    /// and OID).
    pub others_on_after_aggregates: Vec<(u32, u32)>,
}

/// The objects that depend on the relations whose OIDs are `$1`, other
/// than their own rules: indexes (with their schema and name) and others.
const DEPENDENTS: &str = "
SELECT d.classid::pg_catalog.int8, d.objid::pg_catalog.int8, n.nspname::text, c.relname::text
  FROM pg_catalog.pg_depend d
  LEFT JOIN pg_catalog.pg_class c ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.oid = d.objid
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjid = ANY ($1::pg_catalog.oid[])
   AND d.classid <> 'pg_catalog.pg_rewrite'::pg_catalog.regclass
   AND d.classid <> 'pg_catalog.pg_type'::pg_catalog.regclass";

/// The relations whose rules read a continuous aggregate's view, directly
/// or through other such relations.
const AFTER_AGGREGATES: &str = "
WITH RECURSIVE aggregate AS (
    SELECT pg_catalog.format('%I.%I', user_view_schema, user_view_name)::pg_catalog.regclass::pg_catalog.oid AS oid
      FROM _timescaledb_catalog.continuous_agg
), reader(oid) AS (
    SELECT r.ev_class
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid IN (SELECT oid FROM aggregate)
    UNION
    SELECT r.ev_class
      FROM reader p
      JOIN pg_catalog.pg_depend d ON d.refobjid = p.oid
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
)
SELECT DISTINCT c.oid::pg_catalog.int8, n.nspname::text, c.relname::text
  FROM reader x JOIN pg_catalog.pg_class c ON c.oid = x.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid NOT IN (SELECT oid FROM aggregate)";

/// The [`DumpAdjustments`] of the database `client` is connected to (none
/// without the extension).
pub(crate) async fn dump_adjustments(client: &impl GenericClient) -> Result<DumpAdjustments> {
    if !installed(client).await? {
        return Ok(DumpAdjustments::default());
    }
    let layout = chunk_layout(client).await?.unwrap_or_default();
    let mut exclusions: Vec<String> = layout
        .internal_schemas
        .iter()
        .map(|s| format!("--exclude-schema={}", crate::filter::literal_pattern(s)))
        .collect();
    // Chunks made in a schema of the user's (`associated_schema_name`).
    for (_, schema, prefix) in &layout.hypertables {
        if !layout.internal_schemas.contains(schema) {
            exclusions.push(format!(
                "--exclude-table={}.{}*{}",
                crate::filter::literal_pattern(schema),
                crate::filter::literal_pattern(&format!("{prefix}_")),
                crate::filter::literal_pattern("_chunk"),
            ));
        }
    }
    for row in client
        .query(
            "SELECT user_view_schema::text, user_view_name::text                FROM _timescaledb_catalog.continuous_agg",
            &[],
        )
        .await
        .map_err(query("reading TimescaleDB continuous aggregates"))?
    {
        exclusions.push(format!(
            "--exclude-table={}.{}",
            crate::filter::literal_pattern(row.get(0)),
            crate::filter::literal_pattern(row.get(1))
        ));
    }
    let after_aggregates: Vec<(u32, String, String)> = client
        .query(AFTER_AGGREGATES, &[])
        .await
        .map_err(query("reading the views built on continuous aggregates"))?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u32, r.get(1), r.get(2)))
        .collect();
    let oids: Vec<u32> = after_aggregates.iter().map(|(oid, _, _)| *oid).collect();
    let (mut indexes_on_after_aggregates, mut others_on_after_aggregates) =
        (Vec::new(), Vec::new());
    for r in client.query(DEPENDENTS, &[&oids]).await.map_err(query(
        "reading what is built on views of continuous aggregates",
    ))? {
        let (catalog, oid) = (r.get::<_, i64>(0) as u32, r.get::<_, i64>(1) as u32);
        match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
            (Some(schema), Some(name)) => indexes_on_after_aggregates.push((oid, schema, name)),
            _ => others_on_after_aggregates.push((catalog, oid)),
        }
    }
    Ok(DumpAdjustments {
        exclusions,
        after_aggregates,
        indexes_on_after_aggregates,
        others_on_after_aggregates,
    })
}

/// TimescaleDB's own schemas (`_timescaledb_internal`, where chunks go by
/// default, `_timescaledb_catalog`, …).
async fn internal_schemas(client: &impl GenericClient) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname ~ '^_?timescaledb_' \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("reading TimescaleDB's schemas"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn read_hypertables(client: &impl GenericClient) -> Result<Vec<Hypertable>> {
    let rows = client
        .query(
            "SELECT d.hypertable_schema::text, d.hypertable_name::text, d.column_name::text, \
                    d.column_type::text, \
                    coalesce(d.time_interval::text, d.integer_interval::text), d.num_partitions::int4, \
                    h.compression_state = 1, \
                    (SELECT string_agg(quote_ident(c), ', ') FROM unnest(cs.segmentby) c), \
                    (SELECT string_agg(quote_ident(o.c) \
                              || CASE WHEN o.d THEN ' DESC' ELSE ' ASC' END \
                              || CASE WHEN o.n THEN ' NULLS FIRST' ELSE ' NULLS LAST' END, \
                              ', ' ORDER BY o.i) \
                       FROM unnest(cs.orderby, cs.orderby_desc, cs.orderby_nullsfirst) \
                            WITH ORDINALITY o(c, d, n, i)) \
             FROM timescaledb_information.dimensions d \
             JOIN _timescaledb_catalog.hypertable h \
               ON h.schema_name = d.hypertable_schema AND h.table_name = d.hypertable_name \
             LEFT JOIN _timescaledb_catalog.compression_settings cs \
               ON cs.relid = format('%I.%I', h.schema_name, h.table_name)::regclass \
             ORDER BY 1, 2, d.dimension_number",
            &[],
        )
        .await
        .map_err(query("reading TimescaleDB hypertables"))?;
    let mut hypertables: Vec<Hypertable> = Vec::new();
    for row in rows {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let dimension = Dimension {
            column: row.get(2),
            column_type: row.get(3),
            interval: row.get(4),
            partitions: row.get(5),
        };
        match hypertables.last_mut() {
            Some(h) if h.name == name => h.dimensions.push(dimension),
            _ => hypertables.push(Hypertable {
                name,
                dimensions: vec![dimension],
                compression: row.get::<_, bool>(6).then(|| Compression {
                    segment_by: row.get::<_, Option<String>>(7).unwrap_or_default(),
                    order_by: row.get::<_, Option<String>>(8).unwrap_or_default(),
                }),
            }),
        }
    }
    Ok(hypertables)
}

/// The continuous aggregates with the hypertable each reads, those that
/// others are built on first. Their queries are read with an empty
/// `search_path`, so that every name in them is schema-qualified.
async fn read_continuous_aggregates(
    client: &impl GenericClient,
) -> Result<Vec<(ContinuousAggregate, QualifiedName)>> {
    let path: String = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .map_err(query("reading search_path"))?
        .get(0);
    client
        .execute(
            "SELECT pg_catalog.set_config('search_path', '', false)",
            &[],
        )
        .await
        .map_err(query("clearing search_path"))?;
    let rows = client
        .query(
            "SELECT c.user_view_schema::text, c.user_view_name::text, \
                    pg_catalog.pg_get_viewdef(format('%I.%I', c.direct_view_schema, c.direct_view_name)::regclass), \
                    c.materialized_only, \
                    coalesce(p.user_view_schema, h.schema_name)::text, \
                    coalesce(p.user_view_name, h.table_name)::text, \
                    pg_catalog.pg_get_userbyid(v.relowner)::text, \
                    ARRAY(SELECT pg_catalog.format('GRANT %s ON %s TO %s%s', a.privilege_type, v.oid::regclass, \
                                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                                          ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END, \
                                     CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
                            FROM pg_catalog.aclexplode(v.relacl) a \
                           WHERE a.grantee <> v.relowner ORDER BY 1), \
                    pg_catalog.obj_description(v.oid, 'pg_class') \
               FROM _timescaledb_catalog.continuous_agg c \
               JOIN _timescaledb_catalog.hypertable h ON h.id = c.raw_hypertable_id \
               LEFT JOIN _timescaledb_catalog.continuous_agg p ON p.mat_hypertable_id = c.raw_hypertable_id \
               JOIN pg_catalog.pg_class v \
                 ON v.oid = pg_catalog.format('%I.%I', c.user_view_schema, c.user_view_name)::regclass \
              ORDER BY c.mat_hypertable_id",
            &[],
        )
        .await
        .map_err(query("reading TimescaleDB continuous aggregates"));
    client
        .execute(
            "SELECT pg_catalog.set_config('search_path', $1, false)",
            &[&path],
        )
        .await
        .map_err(query("restoring search_path"))?;
    Ok(rows?
        .iter()
        .map(|r| {
            (
                ContinuousAggregate {
                    name: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                    query: r.get(2),
                    materialized_only: r.get(3),
                    owner: r.get(6),
                    grants: r.get(7),
                    comment: r.get(8),
                },
                QualifiedName::new(r.get::<_, String>(4), r.get::<_, String>(5)),
            )
        })
        .collect())
}

async fn read_jobs(client: &impl GenericClient) -> Result<Vec<Job>> {
    let rows = client
        .query(
            "SELECT j.id, j.proc_schema::text, j.proc_name::text, \
                    coalesce(c.user_view_schema, h.schema_name)::text, \
                    coalesce(c.user_view_name, h.table_name)::text, \
                    j.schedule_interval::text, j.max_runtime::text, j.max_retries, \
                    j.retry_period::text, j.scheduled, \
                    (j.config - $1::text[])::text \
               FROM _timescaledb_config.bgw_job j \
               LEFT JOIN _timescaledb_catalog.hypertable h ON h.id = j.hypertable_id \
               LEFT JOIN _timescaledb_catalog.continuous_agg c ON c.mat_hypertable_id = j.hypertable_id \
              WHERE j.id >= 1000 \
              ORDER BY j.id",
            &[&ID_KEYS.to_vec()],
        )
        .await
        .map_err(query("reading TimescaleDB jobs"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let relation = match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(4)) {
                (Some(schema), Some(name)) => Some(QualifiedName::new(schema, name)),
                _ => None,
            };
            Job {
                id: r.get(0),
                procedure: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                relation,
                schedule_interval: r.get(5),
                max_runtime: r.get(6),
                max_retries: r.get(7),
                retry_period: r.get(8),
                scheduled: r.get(9),
                config: r.get(10),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Hypertable {
        Hypertable {
            name: QualifiedName::new("public", "Metrics"),
            dimensions: vec![
                Dimension {
                    column: "time".into(),
                    column_type: "timestamp with time zone".into(),
                    interval: Some("7 days".into()),
                    partitions: None,
                },
                Dimension {
                    column: "device".into(),
                    column_type: "integer".into(),
                    interval: None,
                    partitions: Some(4),
                },
            ],
            compression: Some(Compression {
                segment_by: "device".into(),
                order_by: "time DESC".into(),
            }),
        }
    }

    #[test]
    fn hypertable_sql() {
        assert_eq!(
            metrics().create_sql(),
            "SELECT create_hypertable('\"public\".\"Metrics\"', 'time', chunk_time_interval => INTERVAL '7 days', create_default_indexes => false);\n\
             SELECT add_dimension('\"public\".\"Metrics\"', 'device', number_partitions => 4);\n\
             ALTER TABLE \"public\".\"Metrics\" SET (timescaledb.compress, timescaledb.compress_segmentby = 'device', timescaledb.compress_orderby = 'time DESC');\n"
        );
    }

    #[test]
    fn integer_and_interval_settings() {
        assert_eq!(interval_sql("86400000000"), "86400000000");
        assert_eq!(interval_sql("-5"), "-5");
        assert_eq!(interval_sql("--5"), "INTERVAL '--5'");
        assert_eq!(interval_sql("-"), "INTERVAL '-'");
        assert_eq!(interval_sql("1 day"), "INTERVAL '1 day'");
    }
}
