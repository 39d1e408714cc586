//! Cut-over requests typed on the terminal that runs `migrate`.

use std::io::{BufRead, IsTerminal};

use pglive_migrate::Control;

/// Reads standard input on a thread of its own when it is a terminal:
/// `c` + Enter asks `control` for a cutover, `f` + Enter for one that
/// fences writes on the source first, like `pglive cutover [--fence]` from
/// another shell. Otherwise (scripts, pipes, CI) leaves it alone. Returns
/// whether it listens.
pub(crate) fn listen(control: &Control) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    let control = control.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            match line.trim() {
                "c" | "C" => control.request_cutover(false),
                "f" | "F" => control.request_cutover(true),
                _ => {}
            }
        }
    });
    true
}
