//! Cut-over requests typed on the terminal that runs `migrate`.

use std::io::{BufRead, IsTerminal};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// `c` + Enter asks for a cutover, `f` + Enter for one that fences writes
/// on the source first, like `pglive cutover [--fence]` from another shell.
#[derive(Clone, Default)]
pub struct CutoverKeys {
    /// Whether standard input is a terminal being read.
    listening: bool,
    /// The request typed (`Some(fence)`), and its wake-up.
    typed: Arc<(Mutex<Option<bool>>, Notify)>,
}

impl CutoverKeys {
    /// Reads standard input on a thread of its own when it is a terminal;
    /// otherwise (scripts, pipes, CI) leaves it alone and never fires.
    pub fn listen() -> CutoverKeys {
        let keys = CutoverKeys {
            listening: std::io::stdin().is_terminal(),
            ..CutoverKeys::default()
        };
        if keys.listening {
            let typed = Arc::clone(&keys.typed);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { return };
                    let fence = match line.trim() {
                        "c" | "C" => false,
                        "f" | "F" => true,
                        _ => continue,
                    };
                    *typed.0.lock().expect("not poisoned") = Some(fence);
                    typed.1.notify_waiters();
                }
            });
        }
        keys
    }

    /// Whether typed requests can arrive.
    pub fn listening(&self) -> bool {
        self.listening
    }

    /// Completes with the fence choice once a cutover is typed.
    pub async fn wait(&self) -> bool {
        loop {
            let notified = self.typed.1.notified();
            if let Some(fence) = *self.typed.0.lock().expect("not poisoned") {
                return fence;
            }
            notified.await;
        }
    }
}
