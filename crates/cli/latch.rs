//! A value set from any thread (a signal handler, a stdin reader) and
//! awaited by any task.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Holds the last value set, if any, and wakes every waiter when one is.
#[derive(Clone, Default)]
pub struct Latch<T>(Arc<(Mutex<Option<T>>, Notify)>);

impl<T: Copy> Latch<T> {
    /// Records `value` and wakes every waiter.
    pub fn set(&self, value: T) {
        *self.0.0.lock().expect("not poisoned") = Some(value);
        self.0.1.notify_waiters();
    }

    /// The value, once set.
    pub fn get(&self) -> Option<T> {
        *self.0.0.lock().expect("not poisoned")
    }

    /// Completes with the value once it is set.
    pub async fn wait(&self) -> T {
        loop {
            // Registered before the check, so a `set` in between still wakes it.
            let notified = self.0.1.notified();
            if let Some(value) = self.get() {
                return value;
            }
            notified.await;
        }
    }
}
