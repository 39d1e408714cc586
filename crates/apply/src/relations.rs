//! The source's relations as target tables, by relation id.
//!
//! A Relation message describes a source table before its first change in
//! a session (and again after it changed). Each is resolved against the
//! target's catalog into a [`TableMap`]; the first time a table is met,
//! its target triggers are disabled (when the sessions cannot silence them
//! with `session_replication_role`) and its `GENERATED ALWAYS` identity
//! columns are made to accept the source's values. Tables the caller
//! ignores are remembered by id, and their changes skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pglive_postgres::{ConnectConfig, QualifiedName, connect_sql};
use pglive_repl::pgoutput::{Relation, Type};
use tokio_postgres::Client;

use crate::chunks::{self, ChunkedTable, Resolved};
use crate::error::{Error, Result};
use crate::progress;
use crate::shape::Shapes;
use crate::table::TableMap;

/// The relations described so far.
pub(crate) struct Relations {
    by_id: HashMap<u32, Arc<TableMap>>,
    /// Tables whose changes are not applied, by name…
    ignored_tables: HashSet<QualifiedName>,
    /// …and by the ids their Relation messages gave them.
    ignored_ids: HashSet<u32>,
    /// Tables whose rows the source reports on their chunks.
    chunked: Vec<ChunkedTable>,
    /// Schemas of TimescaleDB's chunks and internal relations.
    internal_schemas: Vec<String>,
    /// The ids of relations that are chunks of a [`ChunkedTable`].
    chunk_ids: HashSet<u32>,
    /// Tables whose triggers and identity columns are ready for the
    /// source's rows.
    prepared: HashSet<QualifiedName>,
    /// The source's own types named by Type messages, by OID.
    types: HashMap<u32, QualifiedName>,
    /// Whether target tables may have columns the source does not send.
    extra_target_columns: bool,
    /// For the short sessions that change a table's identity columns.
    target: ConnectConfig,
}

impl Relations {
    /// No relation described yet; `ignored_tables` are never applied, nor
    /// relations in `internal_schemas` other than chunks of `chunked`.
    pub fn new(
        target: ConnectConfig,
        ignored_tables: HashSet<QualifiedName>,
        chunked: Vec<ChunkedTable>,
        internal_schemas: Vec<String>,
        extra_target_columns: bool,
    ) -> Relations {
        Relations {
            by_id: HashMap::new(),
            ignored_tables,
            ignored_ids: HashSet::new(),
            chunked,
            internal_schemas,
            chunk_ids: HashSet::new(),
            prepared: HashSet::new(),
            types: HashMap::new(),
            extra_target_columns,
            target,
        }
    }

    /// Notes whether `relation` is of an ignored table; true when it is
    /// (nothing more needs describing).
    pub fn ignore(&mut self, relation: &Relation) -> bool {
        let ignored = match self.resolve(relation) {
            Resolved::Internal => true,
            Resolved::ChunkOf(table) => self.ignored_tables.contains(&table),
            Resolved::Itself => self
                .ignored_tables
                .contains(&QualifiedName::new(&relation.namespace, &relation.name)),
        };
        if ignored {
            self.ignored_ids.insert(relation.id);
        } else {
            self.ignored_ids.remove(&relation.id);
        }
        ignored
    }

    fn resolve(&self, relation: &Relation) -> Resolved {
        chunks::resolve(
            &self.chunked,
            &self.internal_schemas,
            &relation.namespace,
            &relation.name,
        )
    }

    /// Whether relation `id` is a chunk of a table (see [`ChunkedTable`]).
    pub fn is_chunk(&self, id: u32) -> bool {
        self.chunk_ids.contains(&id)
    }

    /// Notes the name of a source type (a Type message, sent before the
    /// first Relation that uses it).
    pub fn note_type(&mut self, described: &Type) {
        // pgoutput leaves pg_catalog's name out.
        let schema = if described.namespace.is_empty() {
            "pg_catalog"
        } else {
            &described.namespace
        };
        self.types
            .insert(described.id, QualifiedName::new(schema, &described.name));
    }

    /// Resolves `relation` against the target (through `client`) and
    /// prepares its table the first time it is met; `checks_foreign_keys`
    /// when the sessions cannot silence triggers; `after_schema_change`:
    /// the open batch's transaction replayed a schema change, which only
    /// it sees. True when the relation
    /// had been described before.
    pub async fn describe(
        &mut self,
        relation: &Relation,
        client: &Client,
        checks_foreign_keys: bool,
        after_schema_change: bool,
    ) -> Result<bool> {
        let again = self.by_id.contains_key(&relation.id);
        // A chunk's changes go to its table, which routes them to the
        // target's own chunks.
        let chunk_of;
        let relation = match self.resolve(relation) {
            Resolved::ChunkOf(table) => {
                self.chunk_ids.insert(relation.id);
                chunk_of = Relation {
                    namespace: table.schema,
                    name: table.name,
                    ..relation.clone()
                };
                &chunk_of
            }
            _ => {
                self.chunk_ids.remove(&relation.id);
                relation
            }
        };
        let shapes = Shapes {
            types: &self.types,
            extra_target_columns: self.extra_target_columns,
        };
        let map = TableMap::resolve(client, relation, &shapes, checks_foreign_keys).await?;
        let first = self.prepared.insert(map.name.clone());
        if first && checks_foreign_keys {
            progress::disable_user_triggers(client, &map.name).await?;
        }
        if !map.identity_always.is_empty() {
            if after_schema_change {
                // Made or changed by a schema change replayed in the open
                // batch (a table created, an identity column added): only
                // its transaction sees that, and holds the table's lock.
                progress::allow_identity_values(client, &map.name, &map.identity_always, false)
                    .await?;
            } else if first {
                // A session of its own: the apply sessions may be in a
                // batch's transaction, which would hold the table's lock
                // until the batch commits.
                let session = connect_sql(&self.target).await?;
                progress::allow_identity_values(&session, &map.name, &map.identity_always, true)
                    .await?;
            }
        }
        self.by_id.insert(relation.id, Arc::new(map));
        Ok(again)
    }

    /// The table of relation `id`; `None` when it is ignored.
    pub fn table(&self, id: u32) -> Result<Option<Arc<TableMap>>> {
        if self.ignored_ids.contains(&id) {
            return Ok(None);
        }
        self.by_id
            .get(&id)
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::Protocol(format!("a change for relation {id}, never described")))
    }
}
