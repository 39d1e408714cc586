//! The source's event triggers reach the target at cutover, once pglive's
//! schema work there is over (the post-data restore leaves them out).
//! Every schema change pglive makes on the target before then (indexes,
//! tables adopted mid-run, captured commands replayed, TimescaleDB's
//! objects followed) would fire them, and what they did on the source (an
//! audit row, say) arrives through the stream: firing on the target too
//! would add it twice. Extensions' event triggers (TimescaleDB keeps its
//! catalog by its own) come with their extensions; pglive's capture
//! triggers never leave the source.

use pglive_postgres::{quote_ident, quote_literal};
use tokio_postgres::Client;

use crate::error::{Doing, Result};

/// The event triggers of no extension and not pglive's, with what makes
/// them: name, event, owner, function (qualified), how enabled (`O`, `R`,
/// `A`, `D`), the tags of its `WHEN` clause, comment.
const EVENT_TRIGGERS: &str =
    "SELECT e.evtname::text, e.evtevent::text, pg_catalog.pg_get_userbyid(e.evtowner)::text,
            pg_catalog.format('%I.%I', n.nspname, p.proname), e.evtenabled::text,
            coalesce(e.evttags, '{}')::text[], pg_catalog.obj_description(e.oid, 'pg_event_trigger')
       FROM pg_catalog.pg_event_trigger e
       JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
       JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
      WHERE e.evtname !~ '^pglive_'
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                         WHERE d.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass
                           AND d.objid = e.oid AND d.deptype = 'e')
      ORDER BY 1";

/// One event trigger of the source.
struct EventTrigger {
    name: String,
    event: String,
    owner: String,
    function: String,
    enabled: String,
    tags: Vec<String>,
    comment: Option<String>,
}

impl EventTrigger {
    /// The statements that make it on the target as it is on the source.
    fn create_sql(&self, keep_owner: bool) -> Vec<String> {
        let name = quote_ident(&self.name);
        let when = match self.tags.is_empty() {
            true => String::new(),
            false => format!(
                " WHEN TAG IN ({})",
                self.tags
                    .iter()
                    .map(|t| quote_literal(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        // An event's name is a keyword-like word (`ddl_command_end`).
        let event = match self
            .event
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
        {
            true => self.event.clone(),
            false => quote_ident(&self.event),
        };
        let mut statements = vec![format!(
            "CREATE EVENT TRIGGER {name} ON {event}{when} EXECUTE FUNCTION {}()",
            self.function
        )];
        match self.enabled.as_str() {
            "R" => statements.push(format!("ALTER EVENT TRIGGER {name} ENABLE REPLICA")),
            "A" => statements.push(format!("ALTER EVENT TRIGGER {name} ENABLE ALWAYS")),
            "D" => statements.push(format!("ALTER EVENT TRIGGER {name} DISABLE")),
            _ => {}
        }
        if keep_owner {
            statements.push(format!(
                "ALTER EVENT TRIGGER {name} OWNER TO {}",
                quote_ident(&self.owner)
            ));
        }
        if let Some(comment) = &self.comment {
            statements.push(format!(
                "COMMENT ON EVENT TRIGGER {name} IS {}",
                quote_literal(comment)
            ));
        }
        statements
    }
}

async fn event_triggers(client: &Client, side: &str) -> Result<Vec<EventTrigger>> {
    Ok(client
        .query(EVENT_TRIGGERS, &[])
        .await
        .doing_with(|| format!("reading the {side}'s event triggers"))?
        .iter()
        .map(|r| EventTrigger {
            name: r.get(0),
            event: r.get(1),
            owner: r.get(2),
            function: r.get(3),
            enabled: r.get(4),
            tags: r.get(5),
            comment: r.get(6),
        })
        .collect())
}

/// Makes on the target each event trigger of the source it lacks (by
/// name), enabled as on the source. Run when nothing more of pglive's
/// changes the target's schema. Returns how many it made, and the
/// statements of those only a superuser may make (a target role that is
/// none), for the caller to report: the cutover is past its point of no
/// return, so they do not stop it.
pub(crate) async fn create_on_target(
    source: &Client,
    target: &Client,
    keep_owners: bool,
) -> Result<(usize, Vec<String>)> {
    let there: Vec<String> = event_triggers(target, "target")
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut made = 0;
    let mut left = Vec::new();
    for trigger in event_triggers(source, "source").await? {
        if there.contains(&trigger.name) {
            continue;
        }
        let statements = trigger.create_sql(keep_owners).join("; ");
        match target
            .batch_execute(&format!("BEGIN; {statements}; COMMIT"))
            .await
        {
            Ok(()) => made += 1,
            Err(e) if e.code().is_some_and(|c| c.code() == "42501") => {
                target.batch_execute("ROLLBACK").await.ok();
                left.push(format!("{statements};"));
            }
            Err(e) => {
                return Err(e).doing_with(|| {
                    format!("creating event trigger {:?} on the target", trigger.name)
                });
            }
        }
    }
    Ok((made, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_trigger_is_made_as_the_source_has_it() {
        let trigger = EventTrigger {
            name: "Audit".into(),
            event: "ddl_command_end".into(),
            owner: "app".into(),
            function: "public.audit_ddl".into(),
            enabled: "A".into(),
            tags: vec!["CREATE TABLE".into(), "ALTER TABLE".into()],
            comment: Some("it's ours".into()),
        };
        assert_eq!(
            trigger.create_sql(true),
            [
                "CREATE EVENT TRIGGER \"Audit\" ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE') \
                 EXECUTE FUNCTION public.audit_ddl()",
                "ALTER EVENT TRIGGER \"Audit\" ENABLE ALWAYS",
                "ALTER EVENT TRIGGER \"Audit\" OWNER TO \"app\"",
                "COMMENT ON EVENT TRIGGER \"Audit\" IS 'it''s ours'",
            ]
        );
    }
}
