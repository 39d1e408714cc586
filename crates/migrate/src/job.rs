//! What a migration is asked to do, and the resolved form every stage
//! reads.

use pglive_postgres::{ConnectConfig, QualifiedName};
use pglive_schema::{ObjectFilter, SchemaOptions};

use crate::state::{Record, Settings};

/// How to run a migration; [`MigrateOptions::new`] gives the defaults of
/// `pglive migrate`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MigrateOptions {
    /// The migration's name: names its slot, publications and state.
    pub name: String,
    /// The replication slot (default: the name).
    pub slot: Option<String>,
    /// The publication (default: the name; a second one gets `_changes`).
    pub publication: Option<String>,
    /// Parallel copy workers.
    pub jobs: usize,
    /// Parallel index and constraint builds.
    pub index_jobs: usize,
    /// Target sessions the applier spreads batches over.
    pub apply_sessions: usize,
    /// Use tables that already exist on the target.
    pub reuse_schema: bool,
    /// Make TimescaleDB hypertables on the target before the data.
    pub hypertables: bool,
    /// Plain source tables to make TimescaleDB hypertables on the target.
    pub new_hypertables: Vec<NewHypertable>,
    /// Filters and owner and privilege choices; recorded with the
    /// migration, and kept by every later command.
    pub settings: Settings,
    /// Create on the target the source's roles it lacks (no passwords).
    pub copy_roles: bool,
    /// Cut over by itself once the stream has caught up.
    pub cutover_when_ready: bool,
    /// The size aimed at for each part of a table the copy splits (tables
    /// above four parts' size are split). Default: 256 MiB.
    pub part_bytes: i64,
    /// Whether the source's schema changes are captured and replayed.
    pub ddl: crate::DdlMode,
}

impl MigrateOptions {
    /// The defaults for a migration called `name`.
    pub fn new(name: impl Into<String>) -> MigrateOptions {
        MigrateOptions {
            name: name.into(),
            slot: None,
            publication: None,
            jobs: 4,
            index_jobs: 4,
            apply_sessions: 4,
            reuse_schema: false,
            hypertables: true,
            new_hypertables: Vec::new(),
            settings: Settings::default(),
            copy_roles: false,
            cutover_when_ready: false,
            part_bytes: 256 << 20,
            ddl: crate::DdlMode::Auto,
        }
    }

    /// The slot's name.
    pub fn slot_name(&self) -> &str {
        self.slot.as_deref().unwrap_or(&self.name)
    }

    /// The publication's name.
    pub fn publication_name(&self) -> &str {
        self.publication.as_deref().unwrap_or(&self.name)
    }
}

/// Everything a stage needs: the servers and the options, with the
/// settings as recorded with the migration.
pub(crate) struct Job {
    pub source: ConnectConfig,
    pub target: ConnectConfig,
    pub options: MigrateOptions,
}

impl Job {
    /// A job from the caller's options.
    pub fn new(source: ConnectConfig, target: ConnectConfig, options: &MigrateOptions) -> Job {
        let mut options = options.clone();
        options.jobs = options.jobs.max(1);
        options.index_jobs = options.index_jobs.max(1);
        options.apply_sessions = options.apply_sessions.max(1);
        Job {
            source,
            target,
            options,
        }
    }

    /// A job for the commands that finish a recorded migration (cutover):
    /// its recorded settings, one session each.
    pub fn for_recorded(source: ConnectConfig, target: ConnectConfig, record: &Record) -> Job {
        let mut options = MigrateOptions::new(record.name.clone());
        options.jobs = 1;
        options.index_jobs = 1;
        options.apply_sessions = 1;
        options.reuse_schema = true;
        options.hypertables = false;
        options.settings = record.settings.clone();
        options.slot = Some(record.slot.clone());
        options.publication = Some(record.publication.clone());
        Job {
            source,
            target,
            options,
        }
    }

    /// The migration's name.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// Which schemas and tables, from the settings.
    pub fn filter(&self) -> ObjectFilter {
        self.options.settings.filter()
    }

    /// The copy's options for this job.
    pub fn copy_options(&self) -> pglive_snapshot::CopyOptions {
        let mut options = pglive_snapshot::CopyOptions::default();
        options.migration = self.name().to_owned();
        options.workers = self.options.jobs;
        options.plan.part_size = self.options.part_bytes.max(1);
        options.plan.split_threshold = self.options.part_bytes.max(1).saturating_mul(4);
        options
    }

    /// The schema copy's options for this job.
    pub fn schema_options(&self) -> SchemaOptions {
        let mut options = SchemaOptions::default();
        options.filter = self.filter();
        options.jobs = self.options.index_jobs;
        options.reuse_schema = self.options.reuse_schema;
        options.keep_owners = self.options.settings.keep_owners;
        options.keep_privileges = self.options.settings.keep_privileges;
        // Made at cutover (see `event_triggers`).
        options.without_event_triggers = true;
        // Copied as plain tables, hypertables need no TimescaleDB on the
        // target (one that does not preload it could not create it).
        if !self.options.hypertables {
            options.without_extensions = vec!["timescaledb".to_owned()];
        }
        options
    }
}

/// A plain source table that becomes a TimescaleDB hypertable on the
/// target (`--hypertable TABLE:TIME_COLUMN[:INTERVAL]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewHypertable {
    /// The table (`public` when no schema is given).
    pub table: QualifiedName,
    /// Its time (or integer) column: the hypertable's dimension.
    pub time_column: String,
    /// The chunk interval (`7 days`, or an integer for an integer column);
    /// TimescaleDB's default when `None`.
    pub interval: Option<String>,
}

impl std::str::FromStr for NewHypertable {
    type Err = String;

    /// Parses `[SCHEMA.]TABLE:TIME_COLUMN[:INTERVAL]` (names as written,
    /// not case-folded).
    fn from_str(text: &str) -> std::result::Result<NewHypertable, String> {
        let mut parts = text.splitn(3, ':');
        let (table, column) = match (parts.next(), parts.next()) {
            (Some(t), Some(c)) if !t.is_empty() && !c.is_empty() => (t, c),
            _ => {
                return Err(format!(
                    "{text:?}: expected TABLE:TIME_COLUMN[:INTERVAL], e.g. public.metrics:ts:1 day"
                ));
            }
        };
        let table = match table.split_once('.') {
            Some((schema, name)) if !schema.is_empty() && !name.is_empty() => {
                QualifiedName::new(schema, name)
            }
            Some(_) => return Err(format!("{text:?}: the table name is incomplete")),
            None => QualifiedName::new("public", table),
        };
        let interval = parts.next().map(str::trim).filter(|i| !i.is_empty());
        Ok(NewHypertable {
            table,
            time_column: column.to_owned(),
            interval: interval.map(str::to_owned),
        })
    }
}

impl NewHypertable {
    /// The hypertable it becomes, as the schema stage makes it.
    pub(crate) fn hypertable(&self) -> pglive_schema::Hypertable {
        pglive_schema::Hypertable {
            name: self.table.clone(),
            dimensions: vec![pglive_schema::Dimension {
                column: self.time_column.clone(),
                column_type: String::new(),
                interval: self.interval.clone(),
                partitions: None,
            }],
            compression: None,
        }
    }
}

#[cfg(test)]
mod new_hypertable_tests {
    use super::*;

    #[test]
    fn parses_table_column_and_interval() {
        let h: NewHypertable = "sales.Orders:created at:1 day".parse().unwrap();
        assert_eq!(h.table, QualifiedName::new("sales", "Orders"));
        assert_eq!(h.time_column, "created at");
        assert_eq!(h.interval.as_deref(), Some("1 day"));
        let h: NewHypertable = "events:ts".parse().unwrap();
        assert_eq!(h.table, QualifiedName::new("public", "events"));
        assert_eq!(h.interval, None);
        assert!("events".parse::<NewHypertable>().is_err());
        assert!(".x:ts".parse::<NewHypertable>().is_err());
        assert!(":ts".parse::<NewHypertable>().is_err());
    }
}
