//! Turning one table's changes, in source order, into few set-based
//! statements with the same effect.
//!
//! Consecutive changes of one kind form a *run*:
//! - a run of inserts becomes one insert (COPY for long runs);
//! - a run of deletes by key becomes one `DELETE … USING unnest(…)`;
//! - a run of updates by key that keep their key becomes one
//!   `UPDATE … FROM unnest(…)` per set of changed columns, after repeated
//!   updates of one key are merged (later values win; an unchanged TOAST
//!   value keeps the earlier one).
//!
//! A run ends at a change of another kind, so order holds wherever it could
//! matter: an insert after a delete of the same key, an update after an
//! insert. An update that changes the key, and every change of a table with
//! REPLICA IDENTITY FULL, is a statement of its own.
//!
//! A table whose rows are *tied* (a unique index beyond the key) is
//! checked by the target row by row, so its updates keep source order: a
//! repeated key ends the run instead of merging, and rows with different
//! changed columns are grouped only while they are consecutive. Otherwise
//! a value moved from one row to another would collide on the way.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use bytes::Bytes;
use pglive_repl::pgoutput::ColumnValue;

/// The values of one row, one per written column of the table (see
/// `TableMap::columns`): text, null or unchanged TOAST.
pub(crate) type Values = Vec<ColumnValue>;

/// Rows of an update statement: each row's key and its new values.
pub(crate) type UpdateRows = Vec<(Values, Values)>;

/// One row change, with values already mapped onto the target's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Insert(Values),
    /// An update found by key; `key` holds the old key values (the key
    /// columns' values in key order) and `new` the whole new row.
    Update {
        key: Values,
        new: Values,
        key_changed: bool,
    },
    Delete {
        key: Values,
    },
    /// An update of a REPLICA IDENTITY FULL table: the whole old row.
    UpdateFull {
        old: Values,
        new: Values,
    },
    DeleteFull {
        old: Values,
    },
}

impl Change {
    /// The bytes of values the change holds, for memory accounting.
    pub fn size(&self) -> usize {
        let values =
            |v: &Values| -> usize { v.iter().map(|c| c.bytes().map_or(0, Bytes::len) + 16).sum() };
        match self {
            Change::Insert(v) => values(v),
            Change::Update { key, new, .. } => values(key) + values(new),
            Change::Delete { key } => values(key),
            Change::UpdateFull { old, new } => values(old) + values(new),
            Change::DeleteFull { old } => values(old),
        }
    }
}

/// One statement on one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Statement {
    /// Insert all rows.
    Insert(Vec<Values>),
    /// Update the rows found by `key` (distinct keys), setting the columns
    /// whose `mask` entry is true from `new`.
    Update {
        mask: Vec<bool>,
        rows: Vec<(Values, Values)>,
    },
    /// Delete the rows found by these (distinct) keys.
    Delete(Vec<Values>),
    /// Update exactly one row equal to `old`, setting the columns whose mask
    /// entry is true.
    UpdateFull { old: Values, new: Values },
    /// Delete exactly one row equal to `old`.
    DeleteFull(Values),
}

/// The run being collected.
#[derive(Debug, Default)]
enum Run {
    #[default]
    None,
    Insert(Vec<Values>),
    Delete(Vec<Values>),
    Update {
        rows: Vec<(Values, Values)>,
        by_key: HashMap<Vec<Option<Bytes>>, usize>,
    },
}

/// The statements for one table, built change by change.
#[derive(Debug, Default)]
pub(crate) struct TablePlan {
    /// Indices of the key columns among the written columns.
    key: Vec<usize>,
    /// Keep updates in source order (the table's rows are tied).
    ordered: bool,
    done: Vec<Statement>,
    run: Run,
}

fn key_of(values: &Values) -> Vec<Option<Bytes>> {
    values.iter().map(|v| v.bytes().cloned()).collect()
}

impl TablePlan {
    /// A plan for a table whose key columns are `key` (indices into the
    /// written columns); `ordered` keeps updates in source order.
    pub fn new(key: Vec<usize>, ordered: bool) -> TablePlan {
        TablePlan {
            key,
            ordered,
            done: Vec::new(),
            run: Run::None,
        }
    }

    /// Adds the next change in source order.
    pub fn push(&mut self, change: Change) {
        match change {
            Change::Insert(row) => match &mut self.run {
                Run::Insert(rows) => rows.push(row),
                _ => {
                    self.close_run();
                    self.run = Run::Insert(vec![row]);
                }
            },
            Change::Delete { key } => match &mut self.run {
                Run::Delete(keys) => keys.push(key),
                _ => {
                    self.close_run();
                    self.run = Run::Delete(vec![key]);
                }
            },
            Change::Update {
                key,
                new,
                key_changed: false,
            } => {
                let found = key_of(&key);
                let repeated = self.ordered
                    && matches!(&self.run, Run::Update { by_key, .. } if by_key.contains_key(&found));
                if repeated || !matches!(self.run, Run::Update { .. }) {
                    self.close_run();
                    self.run = Run::Update {
                        rows: Vec::new(),
                        by_key: HashMap::new(),
                    };
                }
                let Run::Update { rows, by_key } = &mut self.run else {
                    unreachable!("just made an update run")
                };
                match by_key.entry(found) {
                    Entry::Occupied(at) => merge_into(&mut rows[*at.get()].1, new),
                    Entry::Vacant(slot) => {
                        slot.insert(rows.len());
                        rows.push((key, new));
                    }
                }
            }
            Change::Update {
                key,
                new,
                key_changed: true,
            } => {
                self.close_run();
                let mask = new
                    .iter()
                    .map(|v| !matches!(v, ColumnValue::UnchangedToast))
                    .collect();
                self.done.push(Statement::Update {
                    mask,
                    rows: vec![(key, new)],
                });
            }
            Change::UpdateFull { old, new } => {
                self.close_run();
                self.done.push(Statement::UpdateFull { old, new });
            }
            Change::DeleteFull { old } => {
                self.close_run();
                self.done.push(Statement::DeleteFull(old));
            }
        }
    }

    fn close_run(&mut self) {
        match std::mem::take(&mut self.run) {
            Run::None => {}
            Run::Insert(rows) => self.done.push(Statement::Insert(rows)),
            Run::Delete(keys) => self.done.push(Statement::Delete(keys)),
            Run::Update { rows, .. } => {
                // One statement per set of changed columns; the keys are
                // distinct, so the rows are independent.
                let mut groups: Vec<(Vec<bool>, UpdateRows)> = Vec::new();
                for (key, new) in rows {
                    let mask: Vec<bool> = new
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            !matches!(v, ColumnValue::UnchangedToast) && !self.key.contains(&i)
                        })
                        .collect();
                    let group = if self.ordered {
                        groups.last_mut().filter(|(m, _)| *m == mask)
                    } else {
                        groups.iter_mut().find(|(m, _)| *m == mask)
                    };
                    match group {
                        Some((_, group)) => group.push((key, new)),
                        None => groups.push((mask, vec![(key, new)])),
                    }
                }
                for (mask, rows) in groups {
                    if mask.iter().any(|&set| set) {
                        self.done.push(Statement::Update { mask, rows });
                    }
                }
            }
        }
    }

    /// The statements, in the order they must run.
    pub fn finish(mut self) -> Vec<Statement> {
        self.close_run();
        self.done
    }
}

/// Applies a later update of the same row onto an earlier one: its values
/// win, except where it says a TOAST value did not change.
fn merge_into(earlier: &mut Values, later: Values) {
    for (slot, value) in earlier.iter_mut().zip(later) {
        if !matches!(value, ColumnValue::UnchangedToast) {
            *slot = value;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The plan must have the same effect as applying every change one by
    //! one. Both are run on a model table (key → row) and compared, for any
    //! valid sequence of changes.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const COLUMNS: usize = 3; // column 0 is the key

    type Row = Vec<Option<String>>;
    type Table = BTreeMap<String, Row>;

    fn text(v: &ColumnValue) -> Option<String> {
        v.bytes().map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    fn value(s: Option<&str>) -> ColumnValue {
        match s {
            Some(s) => ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes())),
            None => ColumnValue::Null,
        }
    }

    /// One change applied on its own, as the source did.
    fn apply_one(table: &mut Table, change: &Change) {
        match change {
            Change::Insert(v) => {
                let key = text(&v[0]).unwrap();
                assert!(table.insert(key, v.iter().map(text).collect()).is_none());
            }
            Change::Update { key, new, .. } => {
                let old = table.remove(&text(&key[0]).unwrap()).expect("row exists");
                let row: Row = new
                    .iter()
                    .zip(old)
                    .map(|(n, o)| match n {
                        ColumnValue::UnchangedToast => o,
                        n => text(n),
                    })
                    .collect();
                assert!(table.insert(row[0].clone().unwrap(), row).is_none());
            }
            Change::Delete { key } => {
                table.remove(&text(&key[0]).unwrap()).expect("row exists");
            }
            Change::UpdateFull { .. } | Change::DeleteFull { .. } => unreachable!(),
        }
    }

    /// One planned statement applied set-wise: all its rows are found
    /// before any is changed, as in one SQL statement, and key conflicts
    /// are errors.
    fn apply_statement(table: &mut Table, statement: &Statement) {
        match statement {
            Statement::Insert(rows) => {
                for v in rows {
                    apply_one(table, &Change::Insert(v.clone()));
                }
            }
            Statement::Delete(keys) => {
                for key in keys {
                    table.remove(&text(&key[0]).unwrap()).expect("row exists");
                }
            }
            Statement::Update { mask, rows } => {
                let found: Vec<(Row, &Values)> = rows
                    .iter()
                    .map(|(key, new)| {
                        let key = text(&key[0]).unwrap();
                        (table.get(&key).cloned().expect("row exists"), new)
                    })
                    .collect();
                let mut seen = std::collections::BTreeSet::new();
                for (key, _) in rows {
                    assert!(
                        seen.insert(text(&key[0])),
                        "keys in one statement are distinct"
                    );
                    table.remove(&text(&key[0]).unwrap());
                }
                for (old, new) in found {
                    let row: Row = old
                        .into_iter()
                        .zip(new.iter().zip(mask))
                        .map(|(o, (n, set))| if *set { text(n) } else { o })
                        .collect();
                    assert!(
                        table.insert(row[0].clone().unwrap(), row).is_none(),
                        "key conflict"
                    );
                }
            }
            Statement::UpdateFull { .. } | Statement::DeleteFull(_) => unreachable!(),
        }
    }

    /// A table like the model's, whose rows may be spread over lanes.
    fn spread_table() -> crate::table::TableMap {
        use crate::table::{Column, Identity, TableMap};
        TableMap {
            name: pglive_postgres::QualifiedName::new("public", "t"),
            quoted: "\"public\".\"t\"".to_owned(),
            source_to_column: (0..COLUMNS).map(Some).collect(),
            columns: (0..COLUMNS)
                .map(|i| Column {
                    quoted: format!("c{i}"),
                    type_sql: "pg_catalog.text".to_owned(),
                    orderable: true,
                })
                .collect(),
            key: vec![0],
            identity: Identity::Key,
            tied: false,
            spread: true,
            identity_always: Vec::new(),
            mismatch: None,
            hypertable: false,
            time_key: None,
        }
    }

    #[derive(Clone, Debug)]
    enum Action {
        Insert(u8, u8),
        Update {
            key: u8,
            new_key: u8,
            col: u8,
            toast: bool,
        },
        Delete(u8),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0u8..6, any::<u8>()).prop_map(|(k, v)| Action::Insert(k, v)),
            (0u8..6, 0u8..6, any::<u8>(), any::<bool>()).prop_map(|(key, new_key, col, toast)| {
                Action::Update {
                    key,
                    new_key,
                    col,
                    toast,
                }
            }),
            (0u8..6).prop_map(Action::Delete),
        ]
    }

    /// A key's text: not a plain integer, so that keys spread over lanes
    /// one by one rather than by integer block.
    fn key_text(k: u8) -> String {
        format!("k{k}")
    }

    /// Turns random actions into a valid change sequence: inserts of absent
    /// keys, updates and deletes of present ones.
    fn changes(actions: &[Action]) -> Vec<Change> {
        let mut present = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for a in actions {
            match *a {
                Action::Insert(k, v) if present.insert(k) => out.push(Change::Insert(vec![
                    value(Some(&key_text(k))),
                    value(Some(&format!("a{v}"))),
                    value((v % 3 != 0).then(|| format!("b{v}")).as_deref()),
                ])),
                Action::Update {
                    key,
                    new_key,
                    col,
                    toast,
                } if present.contains(&key) => {
                    let new_key = if present.contains(&new_key) {
                        key
                    } else {
                        new_key
                    };
                    present.remove(&key);
                    present.insert(new_key);
                    let mut new = vec![
                        value(Some(&key_text(new_key))),
                        value(Some(&format!("u{col}"))),
                        value(Some(&format!("v{col}"))),
                    ];
                    if toast {
                        new[1 + (col as usize % (COLUMNS - 1))] = ColumnValue::UnchangedToast;
                    }
                    out.push(Change::Update {
                        key: vec![value(Some(&key_text(key)))],
                        new,
                        key_changed: new_key != key,
                    });
                }
                Action::Delete(k) if present.remove(&k) => out.push(Change::Delete {
                    key: vec![value(Some(&key_text(k)))],
                }),
                _ => {}
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn planned_statements_equal_one_by_one(
            initial in proptest::collection::btree_set(0u8..6, 0..4),
            actions in proptest::collection::vec(action(), 0..60),
            ordered in any::<bool>(),
        ) {
            let mut seed = Vec::new();
            for k in &initial {
                seed.push(Action::Insert(*k, 7));
            }
            let setup = changes(&seed);
            let mut start = Table::new();
            for c in &setup {
                apply_one(&mut start, c);
            }
            let mut all = seed.clone();
            all.extend(actions);
            let sequence: Vec<Change> = changes(&all).split_off(setup.len());

            let mut expected = start.clone();
            for c in &sequence {
                apply_one(&mut expected, c);
            }
            let mut plan = TablePlan::new(vec![0], ordered);
            for c in sequence.iter().cloned() {
                plan.push(c);
            }
            let statements = plan.finish();
            prop_assert!(statements.len() <= sequence.len().max(1));
            if ordered {
                // Every change reaches the target on its own row, in source
                // order: nothing merged, nothing moved.
                prop_assert_eq!(source_rows(&sequence), statement_rows(&statements));
            }
            let mut actual = start.clone();
            for s in &statements {
                apply_statement(&mut actual, s);
            }
            prop_assert_eq!(&actual, &expected);

            // Spread over lanes (which a key change prevents), each lane's
            // statements applied in turn, last lane first, give the same.
            let key_changed = sequence
                .iter()
                .any(|c| matches!(c, Change::Update { key_changed: true, .. }));
            if !key_changed {
                let table = spread_table();
                let lanes = crate::lanes::split_statements(&table, statements, 3);
                let mut spread = start;
                for statements in lanes.iter().rev() {
                    for s in statements {
                        apply_statement(&mut spread, s);
                    }
                }
                for c in &sequence {
                    let lane = crate::lanes::lane_of_change(&table, true, c, 3);
                    let key = match c {
                        Change::Insert(row) => row[0].clone(),
                        Change::Update { key, .. } | Change::Delete { key } => key[0].clone(),
                        _ => unreachable!(),
                    };
                    let in_lane = |s: &Statement| match s {
                        Statement::Insert(rows) => rows.iter().any(|r| r[0] == key),
                        Statement::Update { rows, .. } => rows.iter().any(|(k, _)| k[0] == key),
                        Statement::Delete(keys) => keys.iter().any(|k| k[0] == key),
                        _ => false,
                    };
                    prop_assert!(
                        lanes.iter().enumerate().all(|(l, ss)| l == lane || !ss.iter().any(in_lane)),
                        "a change's rows run only in its own lane"
                    );
                }
                prop_assert_eq!(spread, expected);
            }
        }
    }

    /// The rows the changes touch, in order: kind, key and new values.
    fn source_rows(changes: &[Change]) -> Vec<(char, ColumnValue, Values)> {
        changes
            .iter()
            .map(|c| match c {
                Change::Insert(v) => ('i', v[0].clone(), v.clone()),
                Change::Update { key, new, .. } => ('u', key[0].clone(), new.clone()),
                Change::Delete { key } => ('d', key[0].clone(), Vec::new()),
                _ => unreachable!(),
            })
            .collect()
    }

    /// The rows the statements touch, in the order they run.
    fn statement_rows(statements: &[Statement]) -> Vec<(char, ColumnValue, Values)> {
        let mut rows = Vec::new();
        for s in statements {
            match s {
                Statement::Insert(v) => {
                    rows.extend(v.iter().map(|v| ('i', v[0].clone(), v.clone())))
                }
                Statement::Update { rows: r, .. } => {
                    rows.extend(r.iter().map(|(k, n)| ('u', k[0].clone(), n.clone())))
                }
                Statement::Delete(keys) => {
                    rows.extend(keys.iter().map(|k| ('d', k[0].clone(), Vec::new())))
                }
                _ => unreachable!(),
            }
        }
        rows
    }

    #[test]
    fn runs_collapse_repeated_updates_of_one_key() {
        let mut plan = TablePlan::new(vec![0], false);
        for v in ["1", "2", "3"] {
            plan.push(Change::Update {
                key: vec![value(Some("k"))],
                new: vec![
                    value(Some("k")),
                    value(Some(v)),
                    ColumnValue::UnchangedToast,
                ],
                key_changed: false,
            });
        }
        let statements = plan.finish();
        assert_eq!(
            statements,
            vec![Statement::Update {
                mask: vec![false, true, false],
                rows: vec![(
                    vec![value(Some("k"))],
                    vec![
                        value(Some("k")),
                        value(Some("3")),
                        ColumnValue::UnchangedToast
                    ]
                )],
            }]
        );
    }
}
