//! The migration's lock, kept: a `migrate` holds an advisory lock on the
//! target for as long as it runs, so other pglive processes know it runs
//! and ask it (cutover, verify) instead of doing the work themselves. An
//! advisory lock lives with its session; when the target restarts or the
//! session is cut, the keeper takes it again on a new session.

use std::sync::Arc;
use std::time::Duration;

use pglive_postgres::{ConnectConfig, connect_sql};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::control::Control;
use crate::events::{Events, Step};
use crate::state;

/// How often the keeper checks its session.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How many times, [`CHECK_EVERY`] apart, the keeper finds the lock held by
/// another process before it stops the migration.
const RETAKE_TRIES: u32 = 15;

/// Holds migration `name`'s lock until [`LockKeeper::release`] (or drop).
pub(crate) struct LockKeeper {
    name: String,
    client: Arc<Mutex<Client>>,
    task: JoinHandle<()>,
}

impl LockKeeper {
    /// Keeps the lock `client` holds for `name`. When its session ends,
    /// a new one takes the lock again as soon as the target answers; when
    /// another process took it meanwhile, the migration is stopped through
    /// `control`, with a warning.
    pub(crate) fn keep(
        config: ConnectConfig,
        name: &str,
        client: Client,
        control: Control,
        events: Arc<dyn Events>,
    ) -> LockKeeper {
        let client = Arc::new(Mutex::new(client));
        let task = tokio::spawn(watch(
            config,
            name.to_owned(),
            Arc::clone(&client),
            control,
            events,
        ));
        LockKeeper {
            name: name.to_owned(),
            client,
            task,
        }
    }

    /// Releases the lock.
    pub(crate) async fn release(self) {
        self.task.abort();
        let client = self.client.lock().await;
        let _ = state::unlock(&client, &self.name).await;
    }
}

impl Drop for LockKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(
    config: ConnectConfig,
    name: String,
    client: Arc<Mutex<Client>>,
    control: Control,
    events: Arc<dyn Events>,
) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let mut held = client.lock().await;
        if !held.is_closed() && held.simple_query("SELECT 1").await.is_ok() {
            continue;
        }
        // The session is gone, and the lock with it: take it again. Another
        // process may hold it for a moment (a `pglive cutover` that then
        // finds the slot in use and asks this one): only a lock held for
        // long means another process runs the migration.
        let mut refused = 0;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let Ok(fresh) = connect_sql(&config).await else {
                continue;
            };
            match state::try_lock(&fresh, &name).await {
                Ok(true) => {
                    *held = fresh;
                    break;
                }
                Ok(false) if refused < RETAKE_TRIES => refused += 1,
                Ok(false) => {
                    events.warn(
                        Step::Streaming,
                        format!(
                            "the lock of migration {name:?} on the target was lost with its session and another \
                             pglive process holds it now: stopping; run `pglive status` to see which"
                        ),
                    );
                    control.stop();
                    return;
                }
                Err(_) => continue,
            }
        }
    }
}
