//! Requests that reach a running migration from outside: stop, or cut
//! over.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A handle the caller keeps to steer a running [`crate::migrate`]: stop at
/// the next transaction boundary (a Ctrl-C), or cut over now (as `pglive
/// cutover` from another process does through the target's state). Clones
/// share the same requests.
#[derive(Clone, Debug)]
pub struct Control {
    stop: CancellationToken,
    cutover: Arc<watch::Sender<Option<bool>>>,
}

impl Default for Control {
    fn default() -> Control {
        Control {
            stop: CancellationToken::new(),
            cutover: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Control {
    /// A handle with nothing requested.
    pub fn new() -> Control {
        Control::default()
    }

    /// Asks the migration to stop at the next transaction boundary; what
    /// is applied stays, and the same migration resumes later.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes once a stop was asked for.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Asks the migration to cut over once it streams; with `fence`, the
    /// source is made read-only first.
    pub fn request_cutover(&self, fence: bool) {
        self.cutover.send_replace(Some(fence));
    }

    /// Forgets a cutover request (it failed, and streaming goes on).
    pub(crate) fn withdraw_cutover(&self) {
        self.cutover.send_replace(None);
    }

    /// Completes with the fence choice once a cutover was asked for.
    pub(crate) async fn cutover_requested(&self) -> bool {
        let mut requests = self.cutover.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail.
        let fence = requests
            .wait_for(Option::is_some)
            .await
            .map(|request| request.unwrap_or(false));
        fence.unwrap_or(false)
    }
}
