//! The user's event triggers on the target are held off (disabled) from
//! post-data until cutover. Every schema change pglive makes on the target
//! meanwhile (tables adopted, captured commands replayed, TimescaleDB's
//! objects followed) would fire them, and what they did on the source (an
//! audit row, say) arrives through the stream: firing on the target too
//! would add it twice. At cutover each is enabled as the source has it.
//! Event triggers of extensions (TimescaleDB keeps its catalog by its
//! own) are left alone.

use pglive_postgres::quote_ident;
use tokio_postgres::Client;

use crate::error::{Doing, Result};

/// The event triggers of no extension, with how each is enabled (`O`,
/// `R`, `A`, or `D` for disabled); pglive's own capture triggers left out.
const USER_EVENT_TRIGGERS: &str = "SELECT e.evtname::text, e.evtenabled::text
       FROM pg_catalog.pg_event_trigger e
      WHERE e.evtname !~ '^pglive_'
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                         WHERE d.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass
                           AND d.objid = e.oid AND d.deptype = 'e')
      ORDER BY 1";

async fn user_event_triggers(client: &Client, side: &str) -> Result<Vec<(String, String)>> {
    Ok(client
        .query(USER_EVENT_TRIGGERS, &[])
        .await
        .doing_with(|| format!("reading the {side}'s event triggers"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Disables every enabled user event trigger of the target; how many.
pub(crate) async fn hold(target: &Client) -> Result<usize> {
    let mut held = 0;
    for (name, enabled) in user_event_triggers(target, "target").await? {
        if enabled == "D" {
            continue;
        }
        target
            .batch_execute(&format!(
                "ALTER EVENT TRIGGER {} DISABLE",
                quote_ident(&name)
            ))
            .await
            .doing_with(|| format!("holding off event trigger {name:?} on the target"))?;
        held += 1;
    }
    Ok(held)
}

/// Enables each target event trigger as the source's of the same name is
/// (those the source has disabled stay so); how many it enabled.
pub(crate) async fn release(source: &Client, target: &Client) -> Result<usize> {
    let on_source = user_event_triggers(source, "source").await?;
    let mut released = 0;
    for (name, enabled) in user_event_triggers(target, "target").await? {
        let Some((_, wanted)) = on_source.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if *wanted == enabled || wanted == "D" {
            continue;
        }
        let how = match wanted.as_str() {
            "R" => " REPLICA",
            "A" => " ALWAYS",
            _ => "",
        };
        target
            .batch_execute(&format!(
                "ALTER EVENT TRIGGER {} ENABLE{how}",
                quote_ident(&name)
            ))
            .await
            .doing_with(|| format!("enabling event trigger {name:?} on the target"))?;
        released += 1;
    }
    Ok(released)
}
