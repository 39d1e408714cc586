//! Preflight checks of what the two roles may do: each privilege pglive
//! would lack later is a failure here, with the statement that grants it.

use pglive_postgres::quote_ident;
use pglive_schema::Catalog;
use tokio_postgres::Client;

use super::Plan;
use crate::error::{Result, chain};

/// The roles a database's objects need on the target: owners of its
/// schemas, relations, types and functions, and every role its privileges,
/// default privileges and policies name (from `pg_shdepend`, which leaves
/// out the bootstrap superuser, so owners are also read directly; objects
/// of extensions and those made with another, such as a range type's
/// constructors, are dumped without an owner of their own).
const ROLES_SQL: &str = "
SELECT DISTINCT r.rolname::text, bool_or(d.deptype = 'o') OVER (PARTITION BY r.rolname)
  FROM pg_catalog.pg_shdepend d
  JOIN pg_catalog.pg_roles r ON r.oid = d.refobjid
 WHERE d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
   AND d.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
UNION
SELECT pg_catalog.pg_get_userbyid(o.owner)::text, true FROM (
    SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass AS catalog, oid, nspowner AS owner, oid AS nsp
      FROM pg_catalog.pg_namespace WHERE nspname <> 'public'
    UNION ALL SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, oid, relowner, relnamespace FROM pg_catalog.pg_class
        -- Array and row types go with their element type or table.
    UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, oid, typowner, typnamespace FROM pg_catalog.pg_type
               WHERE typrelid = 0 AND typcategory <> 'A'
    UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, oid, proowner, pronamespace FROM pg_catalog.pg_proc
    UNION ALL SELECT 'pg_catalog.pg_largeobject'::pg_catalog.regclass, oid, lomowner,
                     'public'::pg_catalog.regnamespace
      FROM pg_catalog.pg_largeobject_metadata) o
  JOIN pg_catalog.pg_namespace n ON n.oid = o.nsp
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pglive')
   AND n.nspname !~ '^pg_'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = o.catalog AND d.objid = o.oid AND d.deptype IN ('e', 'i'))
ORDER BY 1";

/// What every check reads.
#[derive(Clone, Copy)]
struct Sides<'a> {
    source: &'a Client,
    target: &'a Client,
    plan: &'a Plan<'a>,
    catalog: &'a Catalog,
    /// The selected tables.
    oids: &'a [u32],
}

/// Every failure found; empty when the roles may do all pglive will ask.
/// A check that cannot finish says so, after what it found so far.
pub(super) async fn check(
    source: &Client,
    target: &Client,
    plan: &Plan<'_>,
    catalog: &Catalog,
) -> Vec<String> {
    let oids: Vec<u32> = catalog.tables.iter().map(|t| t.oid).collect();
    let sides = Sides {
        source,
        target,
        plan,
        catalog,
        oids: &oids,
    };
    let mut failures = Vec::new();
    let cannot = |failures: &mut Vec<String>, what: &str, checked: Result<()>| {
        if let Err(e) = checked {
            failures.push(format!("cannot {what}: {}", chain(&e)));
        }
    };
    let checked = versions(&sides, &mut failures).await;
    cannot(&mut failures, "compare the server versions", checked);
    let checked = sequences(&sides, &mut failures).await;
    cannot(&mut failures, "check the sequences' privileges", checked);
    let checked = large_objects(&sides, &mut failures).await;
    cannot(
        &mut failures,
        "check the large objects' privileges",
        checked,
    );
    let checked = row_security(&sides, &mut failures).await;
    cannot(&mut failures, "check row-level security", checked);
    let checked = replica_role(&sides, &mut failures).await;
    cannot(&mut failures, "check the target's foreign keys", checked);
    let checked = default_sequences(&sides, &mut failures).await;
    cannot(
        &mut failures,
        "check the sequences of column defaults",
        checked,
    );
    if !plan.resuming {
        let checked = roles(&sides, &mut failures).await;
        cannot(&mut failures, "compare the roles", checked);
    }
    failures
}

async fn versions(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides { source, target, .. } = *sides;
    let version = "SELECT current_setting('server_version_num')::int";
    let s: i32 = source.query_one(version, &[]).await?.get(0);
    let t: i32 = target.query_one(version, &[]).await?.get(0);
    if t / 10000 < s / 10000 {
        failures.push(format!(
            "the target runs PostgreSQL {} but the source {}: a migration may only go to the same or a newer major version",
            t / 10000,
            s / 10000
        ));
    }
    Ok(())
}

async fn sequences(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides {
        source,
        plan,
        catalog,
        ..
    } = *sides;
    for sequence in &catalog.sequences {
        let name = sequence.name.quoted();
        let readable: bool = source
            .query_one(
                "SELECT has_sequence_privilege($1::text::regclass, 'SELECT')",
                &[&name],
            )
            .await?
            .get(0);
        if !readable {
            failures.push(format!(
                "the source role cannot read sequence {name}, so its value cannot be carried at cutover: GRANT SELECT ON SEQUENCE {name} TO {}",
                quote_ident(&plan.source.user)
            ));
        }
    }
    Ok(())
}

async fn large_objects(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides { source, plan, .. } = *sides;
    let row = source
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata),
                    has_table_privilege('pg_catalog.pg_largeobject', 'SELECT')",
            &[],
        )
        .await?;
    let (any, readable): (bool, bool) = (row.get(0), row.get(1));
    if any && !readable {
        failures.push(format!(
            "the source has large objects, whose changes are not in the stream and are compared at cutover through pg_largeobject, \
             which the source role may not read: as a superuser, GRANT SELECT ON pg_catalog.pg_largeobject TO {}",
            quote_ident(&plan.source.user)
        ));
    }
    Ok(())
}

/// Tables with row-level security that a role would see filtered: pglive
/// sessions set `row_security = off`, which makes reading or writing them
/// an error rather than a silent filter.
async fn row_security(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides {
        source,
        target,
        plan,
        oids,
        ..
    } = *sides;
    let rows = source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relforcerowsecurity,
                    pg_catalog.pg_get_userbyid(c.relowner)::text,
                    (SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user)
                    OR (NOT c.relforcerowsecurity AND pg_has_role(c.relowner, 'USAGE'))
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = ANY($1::oid[]) AND c.relrowsecurity",
            &[&oids],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let target_bypasses: bool = target
        .query_one(
            "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    for row in rows {
        let (table, forced, owner, source_bypasses): (String, bool, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let hidden = |whom: &str, user: &str| {
            format!(
                "{table} has row-level security{} that {whom}: ALTER ROLE {} BYPASSRLS (as a superuser), \
                 or migrate as a role that has it",
                if forced { " (FORCE)" } else { "" },
                quote_ident(user)
            )
        };
        if !source_bypasses {
            failures.push(hidden("hides rows from the source role", &plan.source.user));
        }
        // On the target the table is owned by the source's owner (or by
        // the target role with --no-owner).
        let target_owner_member = !plan.settings.keep_owners || {
            target
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)
                        AND pg_has_role($1::text::name, 'USAGE')",
                    &[&owner],
                )
                .await?
                .get::<_, bool>(0)
        };
        if !target_bypasses && (forced || !target_owner_member) {
            failures.push(hidden(
                "would hide rows from the target role while applying changes (run it on the target)",
                &plan.target.user,
            ));
        }
    }
    Ok(())
}

/// Without `session_replication_role = replica` on the target, a cascading
/// foreign key deletes (or changes) rows there before the source's own
/// changes of them arrive, which then find nothing.
async fn replica_role(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides {
        source,
        target,
        plan,
        oids,
        ..
    } = *sides;
    let may_set = target
        .batch_execute("SET session_replication_role = replica; RESET session_replication_role")
        .await
        .is_ok();
    if may_set {
        return Ok(());
    }
    let cascading: Vec<String> = source
        .query(
            "SELECT format('%I on %s', conname, conrelid::regclass) FROM pg_catalog.pg_constraint
              WHERE contype = 'f' AND confrelid = ANY($1::oid[])
                AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd'))
              ORDER BY 1",
            &[&oids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !cascading.is_empty() {
        failures.push(format!(
            "the target role may not set session_replication_role, so cascading foreign keys ({}) would change rows on the target \
             before the source's own changes of them arrive: as a superuser on the target, \
             GRANT SET ON PARAMETER session_replication_role TO {} (PostgreSQL 15+), or migrate as a role that may",
            cascading.join(", "),
            quote_ident(&plan.target.user)
        ));
    }
    Ok(())
}

/// A selected table whose column default uses a sequence the filters leave
/// out (not owned by the table, so `pg_dump --table` does not dump it)
/// could not be created on the target.
async fn default_sequences(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides {
        source,
        catalog,
        oids,
        ..
    } = *sides;
    let selected: Vec<String> = catalog.sequences.iter().map(|s| s.name.quoted()).collect();
    let rows = source
        .query(
            "SELECT DISTINCT format('%I.%I', tn.nspname, t.relname),
                    '\"' || replace(sn.nspname, '\"', '\"\"') || '\".\"' || replace(s.relname, '\"', '\"\"') || '\"'
               FROM pg_catalog.pg_attrdef ad
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                                          AND d.objid = ad.oid
                                          AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
               JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
               JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
               JOIN pg_catalog.pg_class t ON t.oid = ad.adrelid
               JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
              WHERE ad.adrelid = ANY($1::oid[])
              ORDER BY 1, 2",
            &[&oids],
        )
        .await?;
    for row in rows {
        let (table, sequence): (String, String) = (row.get(0), row.get(1));
        if !selected.contains(&sequence) {
            failures.push(format!(
                "a column default of {table} uses sequence {sequence}, which the filters leave out, so the table \
                 could not be created on the target: add --include '{sequence}'"
            ));
        }
    }
    Ok(())
}

/// The roles that own or are granted the source's objects exist on the
/// target, and the target role may give objects to the owners.
async fn roles(sides: &Sides<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Sides {
        source,
        target,
        plan,
        ..
    } = *sides;
    let settings = plan.settings;
    if !settings.keep_owners && !settings.keep_privileges {
        return Ok(());
    }
    let needed: Vec<(String, bool)> = source
        .query(ROLES_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .filter(|(_, owns): &(String, bool)| settings.keep_privileges || *owns)
        .collect();
    let mut missing = Vec::new();
    let mut not_member = Vec::new();
    for (role, owns) in &needed {
        let row = target
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1),
                        (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
                &[role],
            )
            .await?;
        let (exists, superuser): (bool, bool) = (row.get(0), row.get(1));
        if !exists {
            missing.push(quote_ident(role));
            continue;
        }
        if *owns && settings.keep_owners && !superuser {
            // Writing to the owner's tables needs its privileges (USAGE);
            // giving it objects needs SET from PostgreSQL 16 on.
            let member: bool = target
                .query_one(
                    "SELECT pg_has_role($1::text::name, 'USAGE')
                        AND CASE WHEN current_setting('server_version_num')::int < 160000 THEN true
                                 ELSE pg_has_role($1::text::name, 'SET') END",
                    &[role],
                )
                .await?
                .get(0);
            if !member {
                not_member.push(quote_ident(role));
            }
        }
    }
    if !missing.is_empty() && !plan.copy_roles {
        failures.push(format!(
            "role(s) {} own or are granted objects on the source but do not exist on the target: create them there, \
             or pass --roles to copy them (without passwords), or --no-owner and --no-acl to leave owners and privileges behind",
            missing.join(", ")
        ));
    }
    if !not_member.is_empty() {
        failures.push(format!(
            "the target role {} cannot give objects to their owners {} and write to them: GRANT {} TO {} (WITH INHERIT TRUE, SET TRUE) on the target, or pass --no-owner",
            quote_ident(&plan.target.user),
            not_member.join(", "),
            not_member.join(", "),
            quote_ident(&plan.target.user)
        ));
    }
    Ok(())
}
