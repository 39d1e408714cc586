//! What the source holds, as plain typed values.
//!
//! [`Catalog::read`] runs a handful of catalog queries in one session (pass
//! a transaction that imported the slot's snapshot to see exactly that
//! instant) and returns tables with their sizes, keys, replica identity,
//! columns (generated ones marked), partitions, sequences, extensions, the
//! number of large objects and TimescaleDB hypertables. The other stages
//! take these values as input: the data copy plans parts from sizes and
//! keys, the applier needs keys and replica identity, cutover syncs the
//! sequences.
//!
//! Tables are those the [`ObjectFilter`] selects, outside the system
//! schemas, pglive's own `pglive` schema and TimescaleDB's internal schemas,
//! and not members of an extension.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::error::{Result, query};
use crate::filter::ObjectFilter;
use crate::timescale::Timescale;
use pglive_postgres::QualifiedName;

/// The first OID handed out to user objects; lower OIDs are built in and the
/// same on every server.
const FIRST_NORMAL_OID: u32 = 16384;

/// The kind of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TableKind {
    /// A table that holds rows (including a leaf partition).
    Ordinary,
    /// A partitioned table: its rows live in its partitions.
    Partitioned,
}

/// Which old values a table's UPDATEs and DELETEs carry in the WAL
/// (`ALTER TABLE … REPLICA IDENTITY`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicaIdentity {
    /// The primary key's columns (none when there is no primary key).
    Default,
    /// The columns of a unique index.
    Index {
        /// The index's name (in the table's schema).
        name: String,
    },
    /// Every column.
    Full,
    /// Nothing: UPDATE and DELETE cannot be replicated.
    Nothing,
}

/// A column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type as SQL (`format_type`), e.g. `numeric(10,2)` or `"MyEnum"[]`.
    pub type_name: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// A stored generated column: never copied or applied.
    pub generated: bool,
    /// Whether binary COPY can move its values between two servers. Binary
    /// arrays and composites carry type OIDs, which differ between servers
    /// for user-defined types (enums, composites, domains, extension types):
    /// such columns must move as text.
    pub binary_safe: bool,
}

/// A table (ordinary, partition or partitioned).
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Its OID on the source.
    pub oid: u32,
    /// Its schema-qualified name.
    pub name: QualifiedName,
    /// Ordinary or partitioned.
    pub kind: TableKind,
    /// `UNLOGGED`: its changes are not in the WAL, so not in the stream.
    pub unlogged: bool,
    /// The planner's row estimate; `None` if never analyzed.
    pub estimated_rows: Option<i64>,
    /// Size on disk with TOAST (`pg_table_size`), without indexes.
    pub bytes: i64,
    /// Primary key columns in key order; empty without a primary key.
    pub primary_key: Vec<String>,
    /// The replica identity.
    pub replica_identity: ReplicaIdentity,
    /// The columns that identify a row in the stream: the primary key's for
    /// `Default`, the index's for `Index`, empty otherwise.
    pub identity_columns: Vec<String>,
    /// All columns in order (generated ones included and marked).
    pub columns: Vec<Column>,
    /// The partitioned table this one is a partition of.
    pub partition_of: Option<QualifiedName>,
    /// For a partitioned table: its leaf partitions (those the filter
    /// selects), recursively.
    pub leaves: Vec<QualifiedName>,
    /// A TimescaleDB hypertable: its rows live in chunks.
    pub hypertable: bool,
}

impl Table {
    /// Whether the table's rows are copied from it: not a partitioned
    /// table (whose rows live in, and are copied through, its leaves). A
    /// hypertable's rows are read through its root (see
    /// [`Table::hypertable`]).
    pub fn holds_rows(&self) -> bool {
        self.kind == TableKind::Ordinary
    }

    /// What to read the table's own rows from in SQL: `ONLY "schema"."name"`
    /// (not its partitions' or inheritance children's rows), or for a
    /// hypertable its name (its rows live in its chunks).
    pub fn rows_from(&self) -> String {
        match self.hypertable {
            true => self.name.quoted(),
            false => format!("ONLY {}", self.name.quoted()),
        }
    }

    /// The columns that are copied: all but generated ones.
    pub fn copied_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }

    /// The single integer (`smallint`, `integer`, `bigint`) primary key
    /// column, if the key is exactly one such column.
    pub fn integer_key(&self) -> Option<&str> {
        let [key] = self.primary_key.as_slice() else {
            return None;
        };
        let column = self.columns.iter().find(|c| &c.name == key)?;
        matches!(column.type_name.as_str(), "smallint" | "integer" | "bigint")
            .then_some(key.as_str())
    }
}

/// A sequence and its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Its schema-qualified name.
    pub name: QualifiedName,
    /// The last value handed out; `None` if never used (or not readable).
    pub last_value: Option<i64>,
    /// Its start value.
    pub start_value: i64,
}

/// An installed extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Its name, e.g. `hstore`.
    pub name: String,
    /// The schema holding its objects.
    pub schema: String,
    /// The installed version.
    pub version: String,
}

/// Everything the other stages need to know about the source.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    /// `server_version_num`, e.g. `150018`.
    pub server_version_num: u32,
    /// Tables (ordinary, partitions, partitioned), by schema and name.
    pub tables: Vec<Table>,
    /// Sequences in the selected schemas.
    pub sequences: Vec<Sequence>,
    /// Installed extensions.
    pub extensions: Vec<Extension>,
    /// How many large objects the database holds.
    pub large_objects: i64,
    /// TimescaleDB's hypertables, continuous aggregates and jobs (empty
    /// without the extension).
    pub timescale: Timescale,
}

/// Schemas never copied: system schemas and pglive's state.
const SKIPPED_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pglive') \
     AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' \
     AND n.nspname !~ '^_?timescaledb_'";

/// Relation `c` is not a member of an extension (the extension's own
/// script creates it on the target).
const NOT_IN_EXTENSION: &str = "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

impl Catalog {
    /// Reads the catalog of the database `client` is connected to, limited
    /// to what `filter` selects.
    pub async fn read(client: &impl GenericClient, filter: &ObjectFilter) -> Result<Catalog> {
        let version: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .map_err(query("reading server_version_num"))?
            .get(0);
        let server_version_num = version.parse().unwrap_or(0);
        let extensions = read_extensions(client).await?;
        let mut tables = read_tables(client, filter).await?;
        let timescaledb = extensions.iter().find(|e| e.name == "timescaledb");
        let timescale =
            Timescale::read(client, timescaledb.map(|e| e.version.as_str()), &tables).await?;
        for table in &mut tables {
            table.hypertable = timescale.hypertables.iter().any(|h| h.name == table.name);
            if table.hypertable {
                // The root holds nothing; its chunks hold the rows.
                table.bytes = client
                    .query_one(
                        "SELECT coalesce(sum(table_bytes + toast_bytes), 0)::int8 \
                           FROM hypertable_detailed_size($1::text::regclass)",
                        &[&table.name.quoted()],
                    )
                    .await
                    .map_err(query(format!(
                        "reading the size of hypertable {}",
                        table.name
                    )))?
                    .get(0);
            }
        }
        let sequences = read_sequences(client, filter).await?;
        let large_objects: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
                &[],
            )
            .await
            .map_err(query("counting large objects"))?
            .get(0);
        Ok(Catalog {
            server_version_num,
            tables,
            sequences,
            extensions,
            large_objects,
            timescale,
        })
    }

    /// The table named `schema`.`name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.name.schema == schema && t.name.name == name)
    }

    /// The tables whose rows are copied: ordinary tables and leaf
    /// partitions, plus hypertables (read through their root).
    pub fn tables_with_rows(&self) -> impl Iterator<Item = &Table> {
        self.tables.iter().filter(|t| t.holds_rows())
    }

    /// The major version of the server (`15`, or `906` for 9.6).
    pub fn server_major(&self) -> u32 {
        crate::tools::server_major(self.server_version_num)
    }
}

async fn read_extensions(client: &impl GenericClient) -> Result<Vec<Extension>> {
    let rows = client
        .query(
            "SELECT e.extname::text, n.nspname::text, e.extversion \
             FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("reading extensions"))?;
    Ok(rows
        .iter()
        .map(|r| Extension {
            name: r.get(0),
            schema: r.get(1),
            version: r.get(2),
        })
        .collect())
}

/// The filter's parameters for the table and sequence queries: $1 include
/// schemas, $2 exclude schemas, $3/$4 include table (schema, name)
/// patterns, $5/$6 exclude table patterns.
type FilterParams = (
    Vec<String>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<String>,
);

/// Runs `sql`, whose `$1`…`$6` are [`filter_condition`]'s parameters, with
/// the values of `filter`.
async fn query_selected(
    client: &impl GenericClient,
    sql: &str,
    filter: &ObjectFilter,
    what: &'static str,
) -> Result<Vec<tokio_postgres::Row>> {
    let params = filter_params(filter)?;
    client
        .query(
            sql,
            &[
                &params.0, &params.1, &params.2, &params.3, &params.4, &params.5,
            ],
        )
        .await
        .map_err(query(what))
}

fn filter_params(filter: &ObjectFilter) -> Result<FilterParams> {
    let (include_schemas, exclude_schemas) = filter.schema_regexes()?;
    let (include_tables, exclude_tables) = filter.table_patterns()?;
    let split = |patterns: Vec<crate::filter::NamePattern>| {
        patterns
            .into_iter()
            .map(|p| (p.schema, p.name))
            .unzip::<_, _, Vec<_>, Vec<_>>()
    };
    let (include_table_schemas, include_table_names) = split(include_tables);
    let (exclude_table_schemas, exclude_table_names) = split(exclude_tables);
    Ok((
        include_schemas,
        exclude_schemas,
        include_table_schemas,
        include_table_names,
        exclude_table_schemas,
        exclude_table_names,
    ))
}

/// The SQL condition of a filter on relation `c` in namespace `n`: its
/// schema, and for `tables` its name. A sequence (`tables` false) is
/// selected by its schema, and when table patterns are given, by its own
/// name or the table that owns it (as `pg_dump --table` dumps a table's
/// owned sequences with it).
fn filter_condition(tables: bool) -> String {
    let mut sql = String::from(
        "(cardinality($1::text[]) = 0 OR n.nspname ~ ANY($1::text[])) \
         AND NOT n.nspname ~ ANY($2::text[])",
    );
    let matches = |relation: &str, namespace: &str, schemas: &str, names: &str| {
        format!(
            "SELECT 1 FROM unnest({schemas}::text[], {names}::text[]) AS p(s, t) \
             WHERE CASE WHEN p.s IS NULL THEN pg_catalog.pg_table_is_visible({relation}.oid) \
                        ELSE {namespace}.nspname ~ p.s END \
               AND {relation}.relname ~ p.t"
        )
    };
    let owner = |schemas: &str, names: &str| {
        format!(
            "SELECT 1 FROM pg_catalog.pg_depend d \
               JOIN pg_catalog.pg_class o ON o.oid = d.refobjid \
               JOIN pg_catalog.pg_namespace onsp ON onsp.oid = o.relnamespace \
              WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid \
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                AND d.deptype IN ('a', 'i') AND EXISTS ({})",
            matches("o", "onsp", schemas, names)
        )
    };
    if tables {
        sql.push_str(&format!(
            " AND (cardinality($4::text[]) = 0 OR EXISTS ({})) AND NOT EXISTS ({})",
            matches("c", "n", "$3", "$4"),
            matches("c", "n", "$5", "$6"),
        ));
    } else {
        sql.push_str(&format!(
            " AND (cardinality($4::text[]) = 0 OR EXISTS ({}) OR EXISTS ({})) \
             AND NOT EXISTS ({}) AND NOT EXISTS ({})",
            matches("c", "n", "$3", "$4"),
            owner("$3", "$4"),
            matches("c", "n", "$5", "$6"),
            owner("$5", "$6"),
        ));
    }
    sql
}

async fn read_tables(client: &impl GenericClient, filter: &ObjectFilter) -> Result<Vec<Table>> {
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                c.relpersistence = 'u', c.reltuples::float8, \
                pg_catalog.pg_table_size(c.oid), c.relreplident::text, \
                pn.nspname::text, pc.relname::text \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_inherits inh ON inh.inhrelid = c.oid AND c.relispartition \
         LEFT JOIN pg_catalog.pg_class pc ON pc.oid = inh.inhparent \
         LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {SKIPPED_SCHEMAS} \
           AND {NOT_IN_EXTENSION} \
           AND {} \
         ORDER BY 2, 3",
        filter_condition(true)
    );
    let rows = query_selected(client, &sql, filter, "reading tables").await?;
    let replident: Vec<String> = rows.iter().map(|r| r.get(7)).collect();
    let mut tables: Vec<Table> = rows
        .iter()
        .map(|r| {
            let kind = match r.get::<_, String>(3).as_str() {
                "p" => TableKind::Partitioned,
                _ => TableKind::Ordinary,
            };
            let reltuples: f64 = r.get(5);
            let parent_schema: Option<String> = r.get(8);
            let parent_name: Option<String> = r.get(9);
            Table {
                oid: r.get(0),
                name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                kind,
                unlogged: r.get(4),
                estimated_rows: (reltuples >= 0.0).then_some(reltuples as i64),
                bytes: r.get(6),
                primary_key: Vec::new(),
                replica_identity: match r.get::<_, String>(7).as_str() {
                    "f" => ReplicaIdentity::Full,
                    "n" => ReplicaIdentity::Nothing,
                    // 'i': filled in from the index below.
                    _ => ReplicaIdentity::Default,
                },
                identity_columns: Vec::new(),
                columns: Vec::new(),
                partition_of: parent_schema
                    .zip(parent_name)
                    .map(|(s, n)| QualifiedName::new(s, n)),
                leaves: Vec::new(),
                hypertable: false,
            }
        })
        .collect();
    if tables.is_empty() {
        return Ok(tables);
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let by_oid: HashMap<u32, usize> = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();

    // Columns, with what binary COPY needs to know about their types.
    let types = read_types(client).await?;
    let rows = client
        .query(
            "SELECT a.attrelid, a.attname::text, \
                    pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    a.attgenerated <> '', a.atttypid \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await
        .map_err(query("reading columns"))?;
    for r in rows {
        let table = &mut tables[by_oid[&r.get::<_, u32>(0)]];
        table.columns.push(Column {
            name: r.get(1),
            type_name: r.get(2),
            not_null: r.get(3),
            generated: r.get(4),
            binary_safe: binary_safe(&types, r.get(5)),
        });
    }

    // Primary keys and replica identity indexes.
    let rows = client
        .query(
            "SELECT i.indrelid, ic.relname::text, i.indisprimary, i.indisreplident, \
                    ARRAY(SELECT a.attname::text \
                          FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                          JOIN pg_catalog.pg_attribute a \
                            ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          ORDER BY k.ord) \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = ANY($1::oid[]) AND (i.indisprimary OR i.indisreplident)",
            &[&oids],
        )
        .await
        .map_err(query("reading primary keys and replica identity indexes"))?;
    let mut identity_indexes: HashMap<u32, (String, Vec<String>)> = HashMap::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let columns: Vec<String> = r.get(4);
        if r.get::<_, bool>(2) {
            tables[by_oid[&oid]].primary_key = columns.clone();
        }
        if r.get::<_, bool>(3) {
            identity_indexes.insert(oid, (r.get(1), columns));
        }
    }
    for (table, replident) in tables.iter_mut().zip(&replident) {
        match replident.as_str() {
            "i" => {
                if let Some((name, columns)) = identity_indexes.remove(&table.oid) {
                    table.replica_identity = ReplicaIdentity::Index { name };
                    table.identity_columns = columns;
                }
            }
            "d" => table.identity_columns = table.primary_key.clone(),
            _ => {}
        }
    }

    // Leaves of partitioned tables.
    let children: Vec<(QualifiedName, QualifiedName, TableKind)> = tables
        .iter()
        .filter_map(|t| Some((t.partition_of.clone()?, t.name.clone(), t.kind)))
        .collect();
    for table in &mut tables {
        if table.kind != TableKind::Partitioned {
            continue;
        }
        let mut stack = vec![table.name.clone()];
        while let Some(parent) = stack.pop() {
            for (p, child, kind) in &children {
                if *p == parent {
                    match kind {
                        TableKind::Partitioned => stack.push(child.clone()),
                        _ => table.leaves.push(child.clone()),
                    }
                }
            }
        }
        table.leaves.sort();
    }
    Ok(tables)
}

/// What binary COPY needs to know about a type.
struct TypeInfo {
    typtype: u8,
    basetype: u32,
    elem: u32,
    is_array: bool,
}

async fn read_types(client: &impl GenericClient) -> Result<HashMap<u32, TypeInfo>> {
    let rows = client
        .query(
            "SELECT oid, typtype::text, typbasetype, typelem, typcategory = 'A' \
             FROM pg_catalog.pg_type \
             WHERE typtype IN ('d', 'c') OR typcategory = 'A'",
            &[],
        )
        .await
        .map_err(query("reading types"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let typtype: String = r.get(1);
            (
                r.get(0),
                TypeInfo {
                    typtype: typtype.bytes().next().unwrap_or(b'b'),
                    basetype: r.get(2),
                    elem: r.get(3),
                    is_array: r.get(4),
                },
            )
        })
        .collect())
}

/// Whether binary COPY of a value of type `oid` is portable between servers:
/// not a composite, and not an array whose element type is user-defined
/// (both embed type OIDs in the binary format). Domains are looked through.
fn binary_safe(types: &HashMap<u32, TypeInfo>, mut oid: u32) -> bool {
    for _ in 0..32 {
        let Some(info) = types.get(&oid) else {
            return true;
        };
        match info.typtype {
            b'd' => oid = info.basetype,
            b'c' => return false,
            _ if info.is_array => {
                return info.elem < FIRST_NORMAL_OID && binary_safe(types, info.elem);
            }
            _ => return true,
        }
    }
    false
}

async fn read_sequences(
    client: &impl GenericClient,
    filter: &ObjectFilter,
) -> Result<Vec<Sequence>> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, s.last_value, s.start_value \
         FROM pg_catalog.pg_sequences s \
         JOIN pg_catalog.pg_namespace n ON n.nspname = s.schemaname \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename \
         WHERE {SKIPPED_SCHEMAS} \
           AND {NOT_IN_EXTENSION} \
           AND {} \
         ORDER BY 1, 2",
        filter_condition(false)
    );
    let rows = query_selected(client, &sql, filter, "reading sequences").await?;
    Ok(rows
        .iter()
        .map(|r| Sequence {
            name: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            last_value: r.get(2),
            start_value: r.get(3),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_quote_for_sql() {
        let name = QualifiedName::new("My \"S\"", "tablé");
        assert_eq!(name.quoted(), "\"My \"\"S\"\"\".\"tablé\"");
        assert_eq!(name.to_string(), name.quoted());
    }

    #[test]
    fn binary_safety_looks_through_domains_and_arrays() {
        let mut types = HashMap::new();
        // int4[] (1007), a domain over int4 (20000), its array (20001), a
        // composite (20002), a domain over int4[] (20003).
        types.insert(
            1007,
            TypeInfo {
                typtype: b'b',
                basetype: 0,
                elem: 23,
                is_array: true,
            },
        );
        types.insert(
            20000,
            TypeInfo {
                typtype: b'd',
                basetype: 23,
                elem: 0,
                is_array: false,
            },
        );
        types.insert(
            20001,
            TypeInfo {
                typtype: b'b',
                basetype: 0,
                elem: 20000,
                is_array: true,
            },
        );
        types.insert(
            20002,
            TypeInfo {
                typtype: b'c',
                basetype: 0,
                elem: 0,
                is_array: false,
            },
        );
        types.insert(
            20003,
            TypeInfo {
                typtype: b'd',
                basetype: 1007,
                elem: 0,
                is_array: false,
            },
        );
        assert!(binary_safe(&types, 23));
        assert!(binary_safe(&types, 1007));
        assert!(binary_safe(&types, 20000));
        assert!(!binary_safe(&types, 20001));
        assert!(!binary_safe(&types, 20002));
        assert!(binary_safe(&types, 20003));
    }
}
