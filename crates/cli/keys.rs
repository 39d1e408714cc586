//! Cut-over requests typed on the terminal that runs `migrate`.

use std::io::{BufRead, IsTerminal};

use crate::latch::Latch;

/// `c` + Enter asks for a cutover, `f` + Enter for one that fences writes
/// on the source first, like `pglive cutover [--fence]` from another shell.
#[derive(Clone, Default)]
pub struct CutoverKeys {
    /// Whether standard input is a terminal being read.
    listening: bool,
    /// The request typed: whether to fence.
    typed: Latch<bool>,
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
            let typed = keys.typed.clone();
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { return };
                    match line.trim() {
                        "c" | "C" => typed.set(false),
                        "f" | "F" => typed.set(true),
                        _ => {}
                    }
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
        self.typed.wait().await
    }
}
