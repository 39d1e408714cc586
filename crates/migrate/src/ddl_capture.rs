//! Capturing the source's schema changes into the stream.
//!
//! A migration that captures DDL owns, on the source:
//!
//! - the event trigger `pglive_<name>` on `ddl_command_end`, whose function
//!   `pglive."capture_<name>"` writes every DDL command into the WAL as a
//!   transactional logical message (prefix
//!   [`pglive_apply::ddl_message_prefix`]): the command tag, the query
//!   string, the role and `search_path` it ran under, the objects it
//!   created or changed and those it dropped. The message commits or rolls
//!   back with the command, and reaches the applier in stream order;
//! - `pglive."publish_<name>"`, which the capture calls (as the
//!   migration's role; it reads the command's tables itself, so it does
//!   nothing outside an event trigger) to keep the publication of UPDATEs and DELETEs
//!   right: a table created or given a key joins it in the same
//!   transaction, so none of its changes is missed; a table that lost its
//!   key leaves it, so the source never refuses its updates. On a
//!   TimescaleDB source a table created meanwhile joins none (TimescaleDB
//!   refuses `create_hypertable()` on a published table): streaming adopts
//!   it later, with a copy of its rows;
//! - shared by every capturing migration, the `sql_drop` trigger
//!   `pglive_dropped`, which notes the objects a command dropped (to tell
//!   temporary tables' drops, never replayed, from others).
//!
//! The trigger never makes the application's command fail: an error inside
//! it is caught and sent as a message that stops apply at that command.
//! Installed before the slot is created, so every command after the
//! snapshot is captured; removed by cutover and `clean`.

use pglive_postgres::{quote_ident, quote_literal};
use tokio_postgres::Client;

use crate::error::{Doing, Result};
use crate::publication;

/// Whether a migration captures the source's schema changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DdlMode {
    /// Capture when the source can (a superuser role, PostgreSQL 14 or
    /// later) and the migration carries every table; else stop.
    #[default]
    Auto,
    /// Capture; preflight refuses a source role that cannot.
    Capture,
    /// Do not capture: a changed table stops apply before its first row
    /// under the new shape, with the `ALTER` to run on the target.
    Stop,
}

/// The event trigger of migration `name`.
fn trigger_name(name: &str) -> String {
    format!("pglive_{name}")
}

/// The shared `sql_drop` trigger.
const DROPPED_TRIGGER: &str = "pglive_dropped";

/// Whether `name`'s capture trigger is installed on the source.
pub(crate) async fn installed(source: &Client, name: &str) -> Result<bool> {
    Ok(source
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = $1",
            &[&trigger_name(name)],
        )
        .await
        .doing("reading pg_event_trigger")?
        .is_some())
}

/// Why the source cannot capture, if it cannot: event triggers are
/// created by superusers only, and pgoutput sends logical messages from
/// PostgreSQL 14 on.
pub(crate) async fn why_not_allowed(source: &Client) -> Result<Option<String>> {
    let row = source
        .query_one(
            "SELECT rolsuper, current_setting('server_version_num')::int
               FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .doing("reading the source role")?;
    let (superuser, version): (bool, i32) = (row.get(0), row.get(1));
    Ok(if version < 140000 {
        Some("capturing schema changes needs a PostgreSQL 14 or later source (pgoutput sends logical messages from 14 on)".to_owned())
    } else if !superuser {
        Some("capturing schema changes needs an event trigger on the source, which only a superuser may create".to_owned())
    } else {
        None
    })
}

/// Installs `name`'s capture on the source (see the module documentation);
/// `publication` is the migration's first publication. With
/// `leave_new_tables` (a source with TimescaleDB, which refuses
/// `create_hypertable()` on a table in a publication), a table created
/// meanwhile is left out of the publications: streaming adopts it once it
/// is a hypertable, or after a while as a plain table (see
/// [`crate::publication::left_for_adoption`]).
pub(crate) async fn install(
    source: &Client,
    name: &str,
    publication: &str,
    leave_new_tables: bool,
) -> Result<()> {
    let prefix = pglive_apply::ddl_message_prefix(name);
    let capture = quote_ident(&format!("capture_{name}"));
    let publish = quote_ident(&format!("publish_{name}"));
    let changes = publication::changes_name(publication);
    let sql = format!(
        r#"
CREATE SCHEMA IF NOT EXISTS pglive;
GRANT USAGE ON SCHEMA pglive TO PUBLIC;

CREATE OR REPLACE FUNCTION pglive.note_dropped() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('pglive.dropped', coalesce((
        SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'schema', schema_name, 'temporary', is_temporary,
                   'type', object_type, 'name', object_name))::text
          FROM pg_catalog.pg_event_trigger_dropped_objects()), '[]'), true);
END
$fn$;

-- Reads the command's tables itself: outside an event trigger it only
-- fails, so nobody can call it to move tables in or out.
CREATE OR REPLACE FUNCTION pglive.{publish}() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t oid;
    keyed boolean;
    published boolean;
BEGIN
    FOR t IN
        SELECT DISTINCT d.objid FROM pg_catalog.pg_event_trigger_ddl_commands() d
         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
           AND d.object_type OPERATOR(pg_catalog.=) 'table' AND NOT d.in_extension
    LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = t AND c.relkind = 'r' AND c.relpersistence = 'p'
               AND n.nspname NOT LIKE 'pg\_%' AND n.nspname NOT LIKE '\_timescaledb\_%'
               AND n.nspname NOT IN ('information_schema', 'pglive', 'timescaledb_information',
                                     'timescaledb_experimental'));
        -- Not in the migration yet: left for adoption.
        CONTINUE WHEN {leave_new_tables} AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_publication_rel r
              JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
             WHERE p.pubname = {publication_literal} AND r.prrelid = t);
        SELECT CASE c.relreplident
                 WHEN 'f' THEN true
                 WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                        WHERE i.indrelid = t AND i.indisprimary)
                 WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                        WHERE i.indrelid = t AND i.indisreplident)
                 ELSE false END
          INTO keyed FROM pg_catalog.pg_class c WHERE c.oid = t;
        published := EXISTS (
            SELECT 1 FROM pg_catalog.pg_publication_rel r
              JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
             WHERE p.pubname = {changes_literal} AND r.prrelid = t);
        IF keyed AND NOT published THEN
            EXECUTE pg_catalog.format('ALTER PUBLICATION %I ADD TABLE %s', {changes_literal}, t::pg_catalog.regclass);
        ELSIF published AND NOT keyed THEN
            EXECUTE pg_catalog.format('ALTER PUBLICATION %I DROP TABLE %s', {changes_literal}, t::pg_catalog.regclass);
        END IF;
        IF NOT (SELECT p.puballtables FROM pg_catalog.pg_publication p WHERE p.pubname = {publication_literal})
           AND NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_publication_rel r
                 JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
                WHERE p.pubname = {publication_literal} AND r.prrelid = t) THEN
            EXECUTE pg_catalog.format('ALTER PUBLICATION %I ADD TABLE %s', {publication_literal}, t::pg_catalog.regclass);
        END IF;
    END LOOP;
END
$fn$;

-- No SET search_path here: the command's own is what is captured. The
-- message is written outside the exception block: written inside its
-- subtransaction, logical decoding hands it out after the transaction's
-- later rows. Its content is UTF-8 whatever the database's encoding.
CREATE OR REPLACE FUNCTION pglive.{capture}() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    objects jsonb;
    dropped jsonb := '[]';
    missing jsonb;
    payload jsonb;
BEGIN
    payload := pg_catalog.jsonb_build_object(
        'tag', tg_tag, 'query', coalesce(pg_catalog.current_query(), ''),
        'role', current_user, 'search_path', pg_catalog.current_setting('search_path'),
        'at', pg_catalog.statement_timestamp(),
        'standard_conforming_strings', pg_catalog.current_setting('standard_conforming_strings'));
    BEGIN
        SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'schema', schema_name, 'in_extension', in_extension,
                   'type', object_type, 'identity', object_identity)), '[]')
          INTO objects
          FROM pg_catalog.pg_event_trigger_ddl_commands();
        IF tg_tag LIKE 'DROP %' THEN
            dropped := coalesce(NULLIF(
                pg_catalog.current_setting('pglive.dropped', true), ''), '[]')::jsonb;
        END IF;
        -- What rows that existed got in columns added with a default
        -- computed once: the target must give them the same.
        SELECT coalesce(pg_catalog.jsonb_agg(DISTINCT pg_catalog.jsonb_build_object(
                   'table', d.object_identity, 'column', a.attname,
                   'value', a.attmissingval::text)), '[]')
          INTO missing
          FROM pg_catalog.pg_event_trigger_ddl_commands() d
          JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.objid
         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
           AND d.object_type OPERATOR(pg_catalog.=) 'table'
           AND a.atthasmissing AND NOT a.attisdropped;
        PERFORM pglive.{publish}();
        payload := payload OPERATOR(pg_catalog.||)
            pg_catalog.jsonb_build_object('objects', objects, 'dropped', dropped, 'missing', missing);
    EXCEPTION WHEN OTHERS THEN
        -- Never the application's command that fails: apply stops here.
        payload := payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('error', SQLERRM);
    END;
    PERFORM pg_catalog.pg_logical_emit_message(true, {prefix_literal},
        pg_catalog.convert_to(payload::text, 'UTF8'));
END
$fn$;

DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = {dropped_literal}) THEN
        CREATE EVENT TRIGGER {dropped_trigger} ON sql_drop EXECUTE FUNCTION pglive.note_dropped();
    END IF;
END $do$;
DROP EVENT TRIGGER IF EXISTS {trigger};
CREATE EVENT TRIGGER {trigger} ON ddl_command_end EXECUTE FUNCTION pglive.{capture}();
"#,
        changes_literal = quote_literal(&changes),
        leave_new_tables = leave_new_tables,
        publication_literal = quote_literal(publication),
        prefix_literal = quote_literal(&prefix),
        dropped_literal = quote_literal(DROPPED_TRIGGER),
        dropped_trigger = quote_ident(DROPPED_TRIGGER),
        trigger = quote_ident(&trigger_name(name)),
    );
    source
        .batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;"))
        .await
        .doing("installing the capture of schema changes on the source")?;
    Ok(())
}

/// Removes `name`'s capture from the source, and what the capturing
/// migrations share once none is left; whether there was one.
pub(crate) async fn remove(source: &Client, name: &str) -> Result<bool> {
    let was = installed(source, name).await?;
    let sql = format!(
        r#"
BEGIN;
DROP EVENT TRIGGER IF EXISTS {trigger};
DROP FUNCTION IF EXISTS pglive.{capture}();
DROP FUNCTION IF EXISTS pglive.{publish}();
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger e
                     JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
                     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname = 'pglive' AND e.evtevent = 'ddl_command_end') THEN
        DROP EVENT TRIGGER IF EXISTS {dropped_trigger};
        DROP FUNCTION IF EXISTS pglive.note_dropped();
        BEGIN
            DROP SCHEMA IF EXISTS pglive;
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL; -- it holds other things (a migration's state on a target)
        END;
    END IF;
END $do$;
COMMIT;"#,
        trigger = quote_ident(&trigger_name(name)),
        capture = quote_ident(&format!("capture_{name}")),
        publish = quote_ident(&format!("publish_{name}")),
        dropped_trigger = quote_ident(DROPPED_TRIGGER),
    );
    source
        .batch_execute(&sql)
        .await
        .doing("removing the capture of schema changes from the source")?;
    Ok(was)
}
