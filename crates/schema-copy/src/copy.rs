//! Copying the schema with `pg_dump` and `pg_restore`, in two sections.
//!
//! The schema moves in two halves around the data copy (DESIGN.md, steps
//! 2 and 4):
//!
//! 1. [`SchemaCopy::dump`] runs `pg_dump -Fc` twice, for the `pre-data`
//!    section (schemas, types, extensions, functions, tables, sequences,
//!    views) and the `post-data` section (indexes, constraints, triggers,
//!    rules, policies, materialized view data). Given the slot's exported
//!    snapshot, both dumps describe the same instant as the data.
//! 2. [`SchemaCopy::restore_pre_data`] checks that the target holds no
//!    tables yet (unless told to reuse or drop them), then restores the
//!    pre-data section in one transaction: it either all happens or not at
//!    all.
//! 3. After the data, [`SchemaCopy::restore_post_data`] restores the
//!    post-data section in three phases: primary keys and the unique indexes
//!    used as replica identity first, because the applier needs them; then
//!    everything else in `jobs` parallel `pg_restore` workers (which order
//!    foreign keys after the indexes they need); then materialized views are
//!    refreshed, once their tables are full and indexed.
//!
//! By default owners and privileges are restored as `pg_restore` would
//! ([`SchemaOptions::keep_owners`], [`SchemaOptions::keep_privileges`]), in
//! an order that a role which is not a superuser but is a member of the
//! owners — what managed services give — can run: objects first, then
//! privileges, then owners. Without them (`--no-owner --no-acl`) the target
//! role owns everything. Publications and subscriptions are never copied. Roles are copied only on request
//! ([`SchemaCopy::copy_roles`]), without passwords, which cannot be read
//! without superuser rights.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pglive_postgres::{ConnectConfig, SnapshotError, connect_sql, read_only_transaction};
use tokio_postgres::GenericClient;

use crate::error::{Error, Result, query};
use crate::filter::ObjectFilter;
use crate::toc::{self, KeyObjects, TocEntry};
use crate::tools::{PgTools, WorkDir, conninfo, run, run_reporting, server_major};

/// How the schema is copied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaOptions {
    /// Which schemas and tables.
    pub filter: ObjectFilter,
    /// Restore the source's owners (`ALTER … OWNER TO`); needs the roles on
    /// the target, and a target role that is a member of each owner (or a
    /// superuser). Default: on.
    pub keep_owners: bool,
    /// Restore privileges (`GRANT`/`REVOKE`, default privileges); needs the
    /// grantees on the target. Default: on.
    pub keep_privileges: bool,
    /// Leave out `CREATE EXTENSION` (for targets where the provider installs
    /// extensions). Default: off.
    pub skip_extensions: bool,
    /// Extensions (by name) left out of the restore, with their comments.
    /// Without `timescaledb`, the objects built on continuous aggregates
    /// are left out too (post-data's indexes on them included). Default:
    /// none.
    pub without_extensions: Vec<String>,
    /// Leave the event triggers out of post-data (the caller makes them
    /// later). Default: off.
    pub without_event_triggers: bool,
    /// Drop the objects of the pre-data section before creating them
    /// (`--clean --if-exists`), for a fresh restart on a target that holds
    /// an earlier attempt. Foreign keys between the selected tables are
    /// dropped first. Default: off.
    pub drop_if_exists: bool,
    /// Use the tables already on the target: skip the pre-data restore and
    /// the empty-target check. Default: off.
    pub reuse_schema: bool,
    /// Restore the selected objects beside what the target already holds
    /// (skip the empty-target check), e.g. a table created on the source
    /// while a migration streams. Default: off.
    pub add_to_existing: bool,
    /// Parallel `pg_restore` workers for post-data. Default: 4.
    pub jobs: usize,
}

impl Default for SchemaOptions {
    fn default() -> SchemaOptions {
        SchemaOptions {
            filter: ObjectFilter::default(),
            keep_owners: true,
            keep_privileges: true,
            skip_extensions: false,
            without_extensions: Vec::new(),
            without_event_triggers: false,
            drop_if_exists: false,
            reuse_schema: false,
            add_to_existing: false,
            jobs: 4,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Archive entries restored (for post-data: not counting those
    /// skipped).
    pub entries: usize,
    /// For post-data: primary keys and replica identity indexes among them.
    pub key_entries: usize,
    /// For post-data: materialized views refreshed.
    pub materialized_views: usize,
    /// For post-data: entries skipped because the target already has the
    /// object (from an earlier, interrupted restore).
    pub skipped: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// An object of the post-data section whose build started.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostDataProgress {
    /// Objects whose build started so far, this one included.
    pub started: usize,
    /// Objects the restore builds.
    pub total: usize,
    /// Its kind as `pg_restore` names it: `INDEX`, `CONSTRAINT`,
    /// `FK CONSTRAINT`, `TRIGGER`, `MATERIALIZED VIEW DATA`, …
    pub kind: String,
    /// Its name as `pg_restore` prints it (`schema.name`, or
    /// `schema.table name` for constraints).
    pub name: String,
}

/// The kind and name of the object a `pg_restore --verbose` line says it
/// starts to create (`pg_restore: creating INDEX "public.c_w"`), in serial
/// and parallel restores alike.
fn building(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("pg_restore: creating ")?;
    let (kind, quoted) = rest.split_once(" \"")?;
    Some((kind, quoted.strip_suffix('"').unwrap_or(quoted)))
}

/// The two sections dumped from the source.
#[derive(Debug)]
struct Dumped {
    pre_data: PathBuf,
    pre_entries: Vec<TocEntry>,
    /// Pre-data entries restored after the target made the continuous
    /// aggregates they read.
    after_aggregates: Vec<TocEntry>,
    post_data: PathBuf,
    post_entries: Vec<TocEntry>,
    keys: KeyObjects,
    identities: Identities,
}

/// How post-data objects are recognized on the target, so that a restore
/// interrupted midway can run again: objects that exist are skipped.
#[derive(Debug, Default)]
struct Identities {
    /// (catalog, OID) on the source → identity (kind, schema, table, name).
    by_oid: HashMap<(u32, u32), String>,
    /// Partition indexes attached to a parent index: the `schema name` of
    /// an INDEX ATTACH entry → identity.
    attachments: Vec<(String, String)>,
}

impl Identities {
    /// The identity of the object `entry` creates, if known.
    fn of(&self, entry: &TocEntry) -> Option<&String> {
        if let Some(rest) = entry.rest.strip_prefix("INDEX ATTACH ") {
            return self
                .attachments
                .iter()
                .find(|(name, _)| rest == name || rest.starts_with(&format!("{name} ")))
                .map(|(_, identity)| identity);
        }
        self.by_oid.get(&(entry.catalog, entry.oid))
    }
}

/// Identities of the post-data objects of a database: indexes, constraints,
/// triggers, rules, policies (with the catalog and OID of each) and index
/// attachments (catalog 0).
const IDENTITIES: &str = "
SELECT 'pg_class'::regclass::oid, c.oid, 'index|' || n.nspname || '|' || c.relname
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('i', 'I')
UNION ALL
SELECT 'pg_constraint'::regclass::oid, co.oid,
       'constraint|' || n.nspname || '|' || r.relname || '|' || co.conname
  FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_class r ON r.oid = co.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
UNION ALL
SELECT 'pg_trigger'::regclass::oid, t.oid,
       'trigger|' || n.nspname || '|' || r.relname || '|' || t.tgname
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class r ON r.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
 WHERE NOT t.tgisinternal
UNION ALL
SELECT 'pg_rewrite'::regclass::oid, w.oid,
       'rule|' || n.nspname || '|' || r.relname || '|' || w.rulename
  FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_class r ON r.oid = w.ev_class
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
 WHERE w.rulename <> '_RETURN'
UNION ALL
SELECT 'pg_policy'::regclass::oid, p.oid,
       'policy|' || n.nspname || '|' || r.relname || '|' || p.polname
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class r ON r.oid = p.polrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
UNION ALL
SELECT 0, c.oid, 'attach|' || n.nspname || '|' || c.relname || '|' || n.nspname || ' ' || c.relname
  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('i', 'I')";

/// The identity strings of an `IDENTITIES` row: (catalog, OID, identity,
/// INDEX ATTACH tag for attachments).
fn identity_row(row: &tokio_postgres::Row) -> (u32, u32, String, Option<String>) {
    let catalog: u32 = row.get(0);
    let text: String = row.get(2);
    if catalog == 0 {
        // attach|schema|name|schema name
        let (identity, tag) = text.rsplit_once('|').expect("attach rows have a tag");
        (
            catalog,
            row.get(1),
            identity.to_owned(),
            Some(tag.to_owned()),
        )
    } else {
        (catalog, row.get(1), text, None)
    }
}

/// Copies the schema of one source database to one target database with
/// the real `pg_dump` and `pg_restore` (see the module documentation).
#[derive(Debug)]
pub struct SchemaCopy {
    tools: PgTools,
    source: ConnectConfig,
    target: ConnectConfig,
    options: SchemaOptions,
    work: WorkDir,
    dumped: Option<Dumped>,
    left_for_superuser: Vec<String>,
}

impl SchemaCopy {
    /// Prepares a copy from `source` to `target`: asks the source for its
    /// version and finds client programs able to dump it ([`PgTools::find`]).
    pub async fn new(
        source: ConnectConfig,
        target: ConnectConfig,
        options: SchemaOptions,
    ) -> Result<SchemaCopy> {
        let client = connect(&source).await?;
        let version: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .map_err(query(format!(
                "reading the version of {}",
                source.describe()
            )))?
            .get(0);
        let major = server_major(version.parse().unwrap_or(0));
        let tools = PgTools::find(major)?;
        SchemaCopy::with_tools(tools, source, target, options)
    }

    /// Like [`new`](Self::new), with the given client programs.
    pub fn with_tools(
        tools: PgTools,
        source: ConnectConfig,
        target: ConnectConfig,
        options: SchemaOptions,
    ) -> Result<SchemaCopy> {
        Ok(SchemaCopy {
            tools,
            source,
            target,
            options,
            work: WorkDir::create()?,
            dumped: None,
            left_for_superuser: Vec::new(),
        })
    }

    /// The client programs in use.
    pub fn tools(&self) -> &PgTools {
        &self.tools
    }

    /// The options.
    pub fn options(&self) -> &SchemaOptions {
        &self.options
    }

    /// Statements of the pre-data section that only a superuser may run
    /// and the target role is not one, so the restore left them out: GRANTs
    /// on system catalogs (such as `GRANT SELECT ON TABLE
    /// pg_catalog.pg_largeobject TO …`, made on the source for a
    /// migration), and the public schema's owner from a source older than
    /// PostgreSQL 15. The caller reports them.
    pub fn left_for_superuser(&self) -> &[String] {
        &self.left_for_superuser
    }

    /// Fails with [`Error::TargetNotEmpty`] if the target already holds
    /// tables, views or sequences outside the system schemas and `pglive`.
    pub async fn check_target(&self) -> Result<()> {
        let client = connect(&self.target).await?;
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pglive') \
                   AND n.nspname !~ '^pg_' \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                                   WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                                     AND d.objid = c.oid AND d.deptype = 'e') \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(query(format!(
                "listing the relations of {}",
                self.target.describe()
            )))?;
        if rows.is_empty() {
            return Ok(());
        }
        let examples = rows
            .iter()
            .take(5)
            .map(|r| {
                pglive_postgres::QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1))
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::TargetNotEmpty {
            target: self.target.describe(),
            count: rows.len(),
            examples,
        })
    }

    /// Dumps the pre-data and post-data sections of the source, under
    /// `snapshot` (an exported snapshot's name) when given, and notes which
    /// post-data objects are primary keys or replica identity indexes.
    pub async fn dump(&mut self, snapshot: Option<&str>) -> Result<()> {
        let pre_data = self.work.join("pre-data.dump");
        let post_data = self.work.join("post-data.dump");
        let adjustments = {
            let client = connect(&self.source).await?;
            crate::timescale::dump_adjustments(&client).await?
        };
        let excluded = &adjustments.exclusions;
        // Two sessions of the same snapshot: both dumps run at once.
        let (pre, post, keys) = tokio::join!(
            async {
                self.pg_dump("pre-data", &pre_data, snapshot, excluded)
                    .await?;
                self.list(&pre_data).await
            },
            async {
                self.pg_dump("post-data", &post_data, snapshot, excluded)
                    .await?;
                self.list(&post_data).await
            },
            self.key_objects(snapshot),
        );
        let (mut pre_entries, post_entries, (keys, identities)) = (pre?, post?, keys?);
        if self.options.skip_extensions {
            pre_entries = toc::without_extensions(pre_entries);
        }
        pre_entries = toc::without_named_extensions(pre_entries, &self.options.without_extensions);
        let mut post_entries = toc::without_pglive_event_triggers(post_entries);
        if self.options.without_event_triggers {
            post_entries = toc::without_event_triggers(post_entries);
        }
        let (pre_entries, after_aggregates) =
            toc::split_relations(pre_entries, &adjustments.after_aggregates);
        if self
            .options
            .without_extensions
            .iter()
            .any(|e| e == "timescaledb")
        {
            // No aggregates on the target, so nothing built on them: what
            // post-data would build on those views goes too.
            let relations: Vec<(u32, String, String)> = adjustments
                .after_aggregates
                .iter()
                .chain(&adjustments.indexes_on_after_aggregates)
                .cloned()
                .collect();
            post_entries = toc::split_relations(post_entries, &relations).0;
            let others = &adjustments.others_on_after_aggregates;
            post_entries.retain(|e| !others.contains(&(e.catalog, e.oid)));
        }
        self.dumped = Some(Dumped {
            pre_data,
            pre_entries,
            after_aggregates,
            post_data,
            post_entries,
            keys,
            identities,
        });
        Ok(())
    }

    /// Runs `pg_dump` of one section into `file`, leaving out `excluded`
    /// (further `--exclude-…` arguments).
    async fn pg_dump(
        &self,
        section: &str,
        file: &Path,
        snapshot: Option<&str>,
        excluded: &[String],
    ) -> Result<()> {
        let mut cmd = self.tools.command("pg_dump", &self.source);
        cmd.arg("--format=custom")
            .arg(format!("--section={section}"))
            .arg("--no-publications")
            .arg("--no-subscriptions")
            .arg("--exclude-schema=pglive")
            .args(self.options.filter.pg_dump_args())
            .args(excluded)
            .arg("--file")
            .arg(file);
        if !self.options.keep_privileges {
            cmd.arg("--no-acl");
        }
        if let Some(snapshot) = snapshot {
            cmd.arg(format!("--snapshot={snapshot}"));
        }
        cmd.arg("--dbname").arg(conninfo(&self.source));
        run(
            cmd,
            &format!("pg_dump --section={section} of {}", self.source.describe()),
            None,
        )
        .await
        .map(drop)
    }

    async fn list(&self, archive: &Path) -> Result<Vec<TocEntry>> {
        let mut cmd = self.tools.command("pg_restore", &self.target);
        cmd.arg("--list").arg(archive);
        let what = format!("pg_restore --list {}", archive.display());
        let out = run(cmd, &what, None).await?;
        let text = String::from_utf8(out).map_err(|_| Error::Output {
            command: what,
            reason: "the listing is not UTF-8".into(),
        })?;
        Ok(toc::parse(&text))
    }

    async fn key_objects(&self, snapshot: Option<&str>) -> Result<(KeyObjects, Identities)> {
        let mut client = connect(&self.source).await?;
        let context = format!("reading keys of {}", self.source.describe());
        let tx = read_only_transaction(&mut client, snapshot)
            .await
            .map_err(|e| match e {
                SnapshotError::Import { name, source } => {
                    query(format!("importing snapshot {name}"))(source)
                }
                SnapshotError::Begin(source) => query(context.clone())(source),
            })?;
        let keys = read_key_objects(&tx)
            .await
            .map_err(query(context.clone()))?;
        let mut identities = Identities::default();
        for row in tx
            .query(IDENTITIES, &[])
            .await
            .map_err(query(context.clone()))?
        {
            match identity_row(&row) {
                (_, _, identity, Some(tag)) => identities.attachments.push((tag, identity)),
                (catalog, oid, identity, None) => {
                    identities.by_oid.insert((catalog, oid), identity);
                }
            }
        }
        tx.commit().await.map_err(query(context))?;
        Ok((keys, identities))
    }

    /// The identities of the post-data objects the target already has.
    async fn existing_on_target(&self) -> Result<HashSet<String>> {
        let client = connect(&self.target).await?;
        Ok(client
            .query(IDENTITIES, &[])
            .await
            .map_err(query(format!(
                "listing indexes and constraints of {}",
                self.target.describe()
            )))?
            .iter()
            .map(|row| identity_row(row).2)
            .collect())
    }

    async fn ensure_dumped(&mut self) -> Result<&Dumped> {
        if self.dumped.is_none() {
            self.dump(None).await?;
        }
        Ok(self.dumped.as_ref().expect("dumped above"))
    }

    /// Restores the pre-data section on the target in one transaction,
    /// dumping it first (without a snapshot) if [`dump`](Self::dump) was not
    /// called. Fails before writing anything if the target already holds
    /// tables, unless [`SchemaOptions::reuse_schema`] (then nothing is
    /// restored) or [`SchemaOptions::drop_if_exists`] is set.
    pub async fn restore_pre_data(&mut self) -> Result<RestoreReport> {
        let started = Instant::now();
        if self.options.reuse_schema {
            return Ok(RestoreReport::default());
        }
        if self.options.drop_if_exists {
            self.drop_foreign_keys().await?;
        } else if !self.options.add_to_existing {
            self.check_target().await?;
        }
        self.ensure_dumped().await?;
        let dumped = self.dumped.as_ref().expect("dumped above");
        let mut args = Vec::new();
        if self.options.drop_if_exists {
            args.push("--clean".to_owned());
            args.push("--if-exists".to_owned());
        }
        let entries = dumped.pre_entries.clone();
        self.restore_pre_data_entries(&entries, &args, "pre-data")
            .await?;
        Ok(RestoreReport {
            entries: entries.len(),
            elapsed: started.elapsed(),
            ..RestoreReport::default()
        })
    }

    /// How many pre-data entries wait for the target's continuous
    /// aggregates (see [`SchemaCopy::restore_after_aggregates`]); 0 before
    /// [`SchemaCopy::dump`].
    pub fn after_aggregates(&self) -> usize {
        self.dumped
            .as_ref()
            .map_or(0, |dumped| dumped.after_aggregates.len())
    }

    /// Restores the pre-data objects that read TimescaleDB continuous
    /// aggregates (views on them), once the target has made the
    /// aggregates; how many entries (none without such objects).
    pub async fn restore_after_aggregates(&mut self) -> Result<usize> {
        if self.options.reuse_schema {
            return Ok(0);
        }
        self.ensure_dumped().await?;
        let entries = self
            .dumped
            .as_ref()
            .expect("dumped above")
            .after_aggregates
            .clone();
        if !entries.is_empty() {
            self.restore_pre_data_entries(&entries, &[], "pre-data after aggregates")
                .await?;
        }
        Ok(entries.len())
    }

    /// Restores `entries` of the pre-data archive in one transaction: by
    /// `pg_restore` without owners and privileges, else as one script
    /// (see [`SchemaCopy::pre_data_script`]).
    async fn restore_pre_data_entries(
        &mut self,
        entries: &[TocEntry],
        args: &[String],
        what: &str,
    ) -> Result<()> {
        let archive = self.dumped.as_ref().expect("dumped").pre_data.clone();
        if !self.options.keep_owners && !self.options.keep_privileges {
            let list = self.work.join(format!("{}.list", what.replace(' ', "-")));
            write(&list, &toc::list_file(entries))?;
            let mut args = args.to_vec();
            args.push("--single-transaction".to_owned());
            self.pg_restore(&archive, &list, &args, what, &mut |_| {})
                .await?;
        } else {
            let (script, skipped) = self.pre_data_script(&archive, entries, args).await?;
            self.psql(&script, &format!("restoring {what}")).await?;
            self.left_for_superuser.extend(skipped);
        }
        Ok(())
    }

    /// Restores the post-data section: keys first, then the rest in
    /// [`SchemaOptions::jobs`] parallel workers, then materialized view
    /// refreshes (see the module documentation).
    pub async fn restore_post_data(&mut self) -> Result<RestoreReport> {
        self.restore_post_data_reporting(|_| {}).await
    }

    /// As [`SchemaCopy::restore_post_data`], calling `progress` as each
    /// object's build starts (an index build can take hours on a large
    /// table).
    pub async fn restore_post_data_reporting(
        &mut self,
        mut progress: impl FnMut(PostDataProgress) + Send,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        self.ensure_dumped().await?;
        let dumped = self.dumped.as_ref().expect("dumped above");
        // What an interrupted earlier restore already created stays.
        let existing = self.existing_on_target().await?;
        let (done, todo): (Vec<TocEntry>, Vec<TocEntry>) =
            dumped.post_entries.iter().cloned().partition(|e| {
                dumped
                    .identities
                    .of(e)
                    .is_some_and(|identity| existing.contains(identity))
            });
        let phases = toc::post_data_phases(todo, &dumped.keys);
        let hypertable_constraints = self.hypertable_constraints().await?;
        let jobs = self.options.jobs.max(1);
        let parallel = if jobs > 1 {
            vec![format!("--jobs={jobs}")]
        } else {
            Vec::new()
        };
        let total = phases.keys.len() + phases.rest.len() + phases.refresh.len();
        let mut builds = 0;
        let mut on_line = |line: &str| {
            if let Some((kind, name)) = building(line) {
                builds += 1;
                progress(PostDataProgress {
                    started: builds,
                    total,
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                });
            }
        };
        for (name, entries, args) in [
            ("post-data keys", &phases.keys, &parallel),
            ("post-data", &phases.rest, &parallel),
            ("materialized views", &phases.refresh, &Vec::new()),
        ] {
            if entries.is_empty() {
                continue;
            }
            let (hypertables, entries): (Vec<TocEntry>, Vec<TocEntry>) =
                entries.iter().cloned().partition(|e| {
                    e.catalog == toc::PG_CONSTRAINT && hypertable_constraints.contains(&e.oid)
                });
            let list = self.work.join(format!("{}.list", name.replace(' ', "-")));
            if !hypertables.is_empty() {
                // TimescaleDB refuses `ALTER TABLE ONLY` on a hypertable;
                // without ONLY it adds the constraint to every chunk.
                write(&list, &toc::list_file(&hypertables))?;
                let script = self
                    .restore_script(&dumped.post_data, &list, &[])
                    .await?
                    .replace("ALTER TABLE ONLY ", "ALTER TABLE ");
                for entry in &hypertables {
                    // As pg_restore would say it: `CONSTRAINT "schema.table name"`.
                    let words: Vec<&str> = entry.rest.split(' ').collect();
                    if let [kind, schema, table, name, ..] = words.as_slice() {
                        on_line(&format!(
                            "pg_restore: creating {kind} \"{schema}.{table} {name}\""
                        ));
                    }
                }
                self.psql(&script, "restoring constraints of hypertables")
                    .await?;
            }
            if entries.is_empty() {
                continue;
            }
            write(&list, &toc::list_file(&entries))?;
            tracing::debug!(phase = name, entries = entries.len(), "restoring");
            self.pg_restore(&dumped.post_data, &list, args, name, &mut on_line)
                .await?;
        }
        Ok(RestoreReport {
            entries: phases.keys.len() + phases.rest.len() + phases.refresh.len(),
            key_entries: phases.keys.len(),
            materialized_views: phases.refresh.len(),
            skipped: done.len(),
            elapsed: started.elapsed(),
        })
    }

    /// The source's constraints (OIDs) of the tables that are TimescaleDB
    /// hypertables on the target: `pg_dump` adds them with `ALTER TABLE
    /// ONLY`, which a hypertable refuses.
    async fn hypertable_constraints(&self) -> Result<HashSet<u32>> {
        let target = connect(&self.target).await?;
        let hypertables: Vec<String> = crate::timescale::hypertable_names(&target)
            .await?
            .iter()
            .map(|name| name.quoted())
            .collect();
        if hypertables.is_empty() {
            return Ok(HashSet::new());
        }
        let source = connect(&self.source).await?;
        Ok(source
            .query(
                "SELECT c.oid FROM pg_catalog.pg_constraint c \
                  WHERE c.conrelid = ANY (SELECT pg_catalog.to_regclass(t) FROM unnest($1::text[]) t)",
                &[&hypertables],
            )
            .await
            .map_err(query("reading the constraints of hypertables"))?
            .iter()
            .map(|r| r.get::<_, u32>(0))
            .collect())
    }

    /// The pre-data section as one script that a role which is not a
    /// superuser can run: the objects (owned by the target role), then the
    /// privileges, then the owners. `pg_restore` would give each object to
    /// its owner as it creates it, before the privileges come (they are
    /// restored last): an owner that may create in a schema only through a
    /// GRANT would not be allowed to own an object there yet.
    async fn pre_data_script(
        &self,
        archive: &Path,
        entries: &[TocEntry],
        extra: &[String],
    ) -> Result<(String, Vec<String>)> {
        let (mut acl, objects): (Vec<TocEntry>, Vec<TocEntry>) = entries
            .iter()
            .cloned()
            .partition(|e| e.rest.starts_with("ACL ") || e.rest.starts_with("DEFAULT ACL "));
        // Privileges on the system catalogs (such as a GRANT on
        // pg_largeobject made for a migration) only a superuser may change.
        let system: Vec<TocEntry>;
        (system, acl) = acl
            .into_iter()
            .partition(|e| e.rest.starts_with("ACL pg_catalog "));
        let superuser = self.target_is_superuser().await?;
        let mut skipped = Vec::new();
        if !system.is_empty() && self.options.keep_privileges {
            if superuser {
                acl.extend(system);
            } else {
                let list = self.work.join("pre-data-system-acl.list");
                write(&list, &toc::list_file(&system))?;
                let text = self
                    .restore_script(archive, &list, &["--no-owner".to_owned()])
                    .await?;
                skipped.extend(statements(&text));
            }
        }
        let objects_list = self.work.join("pre-data-objects.list");
        write(&objects_list, &toc::list_file(&objects))?;
        let mut extra = extra.to_vec();
        extra.push("--no-acl".to_owned());
        let mut no_owner = extra.clone();
        no_owner.push("--no-owner".to_owned());
        let without_owners = self
            .restore_script(archive, &objects_list, &no_owner)
            .await?;
        let mut script = without_owners.clone();
        if self.options.keep_privileges && !acl.is_empty() {
            let acl_list = self.work.join("pre-data-acl.list");
            write(&acl_list, &toc::list_file(&acl))?;
            script.push_str(
                &self
                    .restore_script(archive, &acl_list, &["--no-owner".to_owned()])
                    .await?,
            );
        }
        if self.options.keep_owners {
            let with_owners = self.restore_script(archive, &objects_list, &extra).await?;
            for line in added_lines(&with_owners, &without_owners).lines() {
                // Before PostgreSQL 15 the public schema belonged to the
                // bootstrap superuser; a newer target gives it to
                // pg_database_owner, and only a superuser may change that.
                if !superuser && line.starts_with("ALTER SCHEMA public OWNER TO ") {
                    skipped.push(line.to_owned());
                } else {
                    script.push_str(line);
                    script.push('\n');
                }
            }
        }
        Ok((script, skipped))
    }

    async fn target_is_superuser(&self) -> Result<bool> {
        let client = connect(&self.target).await?;
        Ok(client
            .query_one(
                "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(query(format!(
                "reading the role of {}",
                self.target.describe()
            )))?
            .get(0))
    }

    /// `pg_restore --file=-` of the listed entries: the SQL it would run.
    async fn restore_script(
        &self,
        archive: &Path,
        list: &Path,
        extra: &[String],
    ) -> Result<String> {
        let mut cmd = self.tools.command("pg_restore", &self.target);
        cmd.arg("--use-list").arg(list).args(extra);
        cmd.arg("--file=-").arg(archive);
        let what = format!("pg_restore --file=- {}", archive.display());
        let out = run(cmd, &what, None).await?;
        String::from_utf8(out).map_err(|_| Error::Output {
            command: what,
            reason: "the script is not UTF-8".into(),
        })
    }

    /// Runs `script` on the target in one transaction with `psql`; `what`
    /// names it in errors ("restoring pre-data").
    async fn psql(&self, script: &str, what: &str) -> Result<()> {
        let mut cmd = self.tools.command("psql", &self.target);
        cmd.args([
            "-X",
            "-q",
            "--echo-errors",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
        ])
        .arg("--dbname")
        .arg(conninfo(&self.target));
        run(
            cmd,
            &format!("psql {what} on {}", self.target.describe()),
            Some(script.as_bytes()),
        )
        .await
        .map(drop)
    }

    async fn pg_restore(
        &self,
        archive: &Path,
        list: &Path,
        extra: &[String],
        what: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<()> {
        let mut cmd = self.tools.command("pg_restore", &self.target);
        cmd.arg("--exit-on-error")
            .arg("--verbose")
            .arg("--use-list")
            .arg(list)
            .args(extra);
        if !self.options.keep_owners {
            cmd.arg("--no-owner");
        }
        if !self.options.keep_privileges {
            cmd.arg("--no-acl");
        }
        cmd.arg("--dbname").arg(conninfo(&self.target)).arg(archive);
        run_reporting(
            cmd,
            &format!("pg_restore of {what} into {}", self.target.describe()),
            on_line,
        )
        .await
    }

    /// Drops the foreign keys of the target's tables that the source's
    /// selection also has, so that `--clean` can drop the tables in any
    /// order.
    async fn drop_foreign_keys(&self) -> Result<()> {
        let source = connect(&self.source).await?;
        let catalog = crate::Catalog::read(&source, &self.options.filter).await?;
        let names: std::collections::HashSet<&pglive_postgres::QualifiedName> =
            catalog.tables.iter().map(|t| &t.name).collect();
        let target = connect(&self.target).await?;
        let context = format!("dropping foreign keys on {}", self.target.describe());
        let rows = target
            .query(
                "SELECT n.nspname::text, r.relname::text, fn.nspname::text, f.relname::text, \
                        c.conname::text \
                 FROM pg_catalog.pg_constraint c \
                 JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
                 JOIN pg_catalog.pg_class f ON f.oid = c.confrelid \
                 JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace \
                 WHERE c.contype = 'f'",
                &[],
            )
            .await
            .map_err(query(context.clone()))?;
        for row in rows {
            let table = pglive_postgres::QualifiedName::new(
                row.get::<_, String>(0),
                row.get::<_, String>(1),
            );
            let referenced = pglive_postgres::QualifiedName::new(
                row.get::<_, String>(2),
                row.get::<_, String>(3),
            );
            if !names.contains(&table) && !names.contains(&referenced) {
                continue;
            }
            let name: String = row.get(4);
            target
                .batch_execute(&format!(
                    "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {}",
                    pglive_postgres::quote_ident(&name)
                ))
                .await
                .map_err(query(format!("{context}: {table}")))?;
        }
        Ok(())
    }

    /// Creates on the target the source's roles that it lacks, with their
    /// attributes and memberships but without passwords
    /// (`pg_dumpall --roles-only --no-role-passwords`). Roles that already
    /// exist are left as they are.
    pub async fn copy_roles(&self) -> Result<usize> {
        let mut cmd = self.tools.command("pg_dumpall", &self.source);
        cmd.arg("--roles-only")
            .arg("--no-role-passwords")
            .arg("--dbname")
            .arg(conninfo(&self.source));
        let what = format!("pg_dumpall --roles-only of {}", self.source.describe());
        let script =
            String::from_utf8(run(cmd, &what, None).await?).map_err(|_| Error::Output {
                command: what,
                reason: "the script is not UTF-8".into(),
            })?;
        let target = connect(&self.target).await?;
        let existing: Vec<String> = target
            .query("SELECT rolname::text FROM pg_catalog.pg_roles", &[])
            .await
            .map_err(query(format!(
                "listing roles of {}",
                self.target.describe()
            )))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (script, created) = roles_script(&script, &existing);
        if created == 0 {
            return Ok(0);
        }
        self.psql(&script, "creating roles").await?;
        Ok(created)
    }
}

/// The SQL statements of a `pg_restore` script, one per line, without its
/// comments, settings and blank lines.
fn statements(script: &str) -> Vec<String> {
    script
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("--")
                && !l.starts_with('\\')
                && !l.starts_with("SET ")
                && !l.starts_with("SELECT pg_catalog.set_config")
        })
        .map(str::to_owned)
        .collect()
}

/// The lines of `with` that `without` lacks, in order, where `without` is
/// `with` less some lines (a script with and without its owner statements).
/// Comments (whose `Owner:` differs) and psql's `\restrict` lines, which
/// hold a new random key in every script, are left out of both.
fn added_lines(with: &str, without: &str) -> String {
    let keep = |line: &&str| {
        !line.starts_with("--")
            && !line.starts_with("\\restrict")
            && !line.starts_with("\\unrestrict")
    };
    let mut base = without.lines().filter(keep).peekable();
    let mut added = String::new();
    for line in with.lines().filter(keep) {
        if base.peek() == Some(&line) {
            base.next();
        } else {
            added.push_str(line);
            added.push('\n');
        }
    }
    added
}

/// The role script without the `CREATE ROLE` and `ALTER ROLE` lines of roles
/// in `existing`, and how many roles it creates.
fn roles_script(script: &str, existing: &[String]) -> (String, usize) {
    let mut out = String::new();
    let mut created = 0;
    for line in script.lines() {
        let role = line
            .strip_prefix("CREATE ROLE ")
            .map(|r| (r, true))
            .or_else(|| line.strip_prefix("ALTER ROLE ").map(|r| (r, false)))
            .and_then(|(rest, create)| Some((leading_ident(rest)?, create)));
        match role {
            Some((name, _)) if existing.contains(&name) => continue,
            Some((_, true)) => created += 1,
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, created)
}

/// The identifier at the start of `text`, unquoted.
fn leading_ident(text: &str) -> Option<String> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text.find([' ', ';']).unwrap_or(text.len());
        (end > 0).then(|| text[..end].to_owned())
    }
}

async fn read_key_objects(
    client: &impl GenericClient,
) -> Result<KeyObjects, tokio_postgres::Error> {
    let mut keys = KeyObjects::default();
    for row in client
        .query(
            "SELECT c.oid FROM pg_catalog.pg_constraint c \
             WHERE c.contype = 'p' OR (c.contype = 'u' AND EXISTS ( \
                 SELECT 1 FROM pg_catalog.pg_index i \
                 WHERE i.indexrelid = c.conindid AND i.indisreplident))",
            &[],
        )
        .await?
    {
        keys.constraints.insert(row.get(0));
    }
    for row in client
        .query(
            "SELECT i.indexrelid, n.nspname::text || ' ' || ic.relname::text, i.indisreplident \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace \
             WHERE i.indisprimary OR i.indisreplident",
            &[],
        )
        .await?
    {
        if row.get::<_, bool>(2) {
            keys.indexes.insert(row.get(0));
        }
        keys.index_names.insert(row.get(1));
    }
    Ok(keys)
}

async fn connect(config: &ConnectConfig) -> Result<tokio_postgres::Client> {
    connect_sql(config).await.map_err(|source| Error::Connect {
        server: config.describe(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_lines_that_start_a_build() {
        // As PostgreSQL 15's pg_restore prints them, serial or with --jobs.
        assert_eq!(
            building(r#"pg_restore: creating INDEX "public.we ird""#),
            Some(("INDEX", "public.we ird"))
        );
        assert_eq!(
            building(r#"pg_restore: creating FK CONSTRAINT "public.c c_p_fkey""#),
            Some(("FK CONSTRAINT", "public.c c_p_fkey"))
        );
        assert_eq!(
            building("pg_restore: finished item 3210 FK CONSTRAINT c c_p_fkey"),
            None
        );
        assert_eq!(building("pg_restore: launching item 3209 INDEX c_w"), None);
    }

    #[test]
    fn added_lines_are_the_owner_statements() {
        let without = "\\restrict abc\n-- Owner: -\nCREATE TABLE t ();\n\nCREATE VIEW v AS SELECT 1;\n\\unrestrict abc\n";
        let with = "\\restrict xyz\n-- Owner: app\nCREATE TABLE t ();\n\nALTER TABLE t OWNER TO app;\n\nCREATE VIEW v AS SELECT 1;\nALTER VIEW v OWNER TO app;\n\\unrestrict xyz\n";
        assert_eq!(
            added_lines(with, without),
            "ALTER TABLE t OWNER TO app;\n\nALTER VIEW v OWNER TO app;\n"
        );
    }

    #[test]
    fn existing_roles_are_left_alone() {
        let script = "SET default_transaction_read_only = off;\n\
            CREATE ROLE app;\n\
            ALTER ROLE app WITH NOSUPERUSER LOGIN;\n\
            CREATE ROLE \"Odd \"\"One\";\n\
            ALTER ROLE \"Odd \"\"One\" WITH NOLOGIN;\n\
            CREATE ROLE postgres;\n\
            ALTER ROLE postgres WITH SUPERUSER;\n\
            GRANT app TO \"Odd \"\"One\";\n";
        let (out, created) = roles_script(script, &["postgres".into(), "Odd \"One".into()]);
        assert_eq!(created, 1);
        assert_eq!(
            out,
            "SET default_transaction_read_only = off;\n\
             CREATE ROLE app;\n\
             ALTER ROLE app WITH NOSUPERUSER LOGIN;\n\
             GRANT app TO \"Odd \"\"One\";\n"
        );
    }
}
