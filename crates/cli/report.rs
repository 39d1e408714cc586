//! Everything the user sees while pglive works: stage lines, copy progress
//! and the streaming status. On a terminal these are progress bars; else
//! plain lines every few seconds (and JSON through `tracing` with
//! `--log-format json`).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pglive_apply::Progress;

/// Bytes as a short human figure.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where progress goes.
pub struct Reporter {
    bars: Option<MultiProgress>,
    copy: Mutex<Option<CopyProgress>>,
    stream: Mutex<StreamDisplay>,
}

struct CopyProgress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    in_flight: std::collections::HashMap<(String, i32), u64>,
    started: Instant,
    last_line: Instant,
}

#[derive(Default)]
struct StreamDisplay {
    bar: Option<ProgressBar>,
    last: Option<(Instant, u64)>,
    last_line: Option<Instant>,
    rate: f64,
}

impl Reporter {
    /// Progress bars when stderr is a terminal and logs are text.
    pub fn new(json_logs: bool) -> Reporter {
        let bars = (!json_logs && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        Reporter {
            bars,
            copy: Mutex::new(None),
            stream: Mutex::new(StreamDisplay::default()),
        }
    }

    /// A line that stays: a stage starting or finishing.
    pub fn line(&self, text: impl AsRef<str>) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text.as_ref());
            }
            None => eprintln!("{}", text.as_ref()),
        }
        tracing::info!(target: "pglive", "{}", text.as_ref());
    }

    /// Starts the copy display for `total` estimated bytes.
    pub fn copy_started(&self, total: u64) {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(total.max(1)));
            bar.set_style(
                ProgressStyle::with_template(
                    "copy  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        *self.copy.lock().expect("not poisoned") = Some(CopyProgress {
            bar,
            total,
            done: 0,
            in_flight: Default::default(),
            started: Instant::now(),
            last_line: Instant::now(),
        });
    }

    /// Updates the copy display from a copy event.
    pub fn copy_event(&self, event: &pglive_snapshot::CopyEvent) {
        use pglive_snapshot::CopyEvent;
        let mut guard = self.copy.lock().expect("not poisoned");
        let Some(copy) = guard.as_mut() else { return };
        match event {
            CopyEvent::Progress {
                table, part, bytes, ..
            } => {
                copy.in_flight.insert((table.to_string(), *part), *bytes);
            }
            CopyEvent::PartDone {
                table, part, bytes, ..
            } => {
                copy.in_flight.remove(&(table.to_string(), *part));
                copy.done += bytes;
            }
            _ => {}
        }
        let moved = copy.done + copy.in_flight.values().sum::<u64>();
        let active: Vec<String> = {
            let mut names: Vec<&String> = copy.in_flight.keys().map(|(t, _)| t).collect();
            names.sort();
            names.dedup();
            names.into_iter().take(3).cloned().collect()
        };
        match &copy.bar {
            Some(bar) => {
                bar.set_length(copy.total.max(moved).max(1));
                bar.set_position(moved);
                bar.set_message(active.join(" "));
            }
            None if copy.last_line.elapsed() >= Duration::from_secs(5) => {
                copy.last_line = Instant::now();
                let secs = copy.started.elapsed().as_secs_f64().max(0.001);
                let rate = moved as f64 / secs;
                let eta = if rate > 0.0 && copy.total > moved {
                    format!(", ETA {:.0}s", (copy.total - moved) as f64 / rate)
                } else {
                    String::new()
                };
                eprintln!(
                    "copy: {} of ~{} ({}/s{eta}); active: {}",
                    bytes(moved),
                    bytes(copy.total),
                    bytes(rate as u64),
                    active.join(", ")
                );
            }
            None => {}
        }
    }

    /// Ends the copy display.
    pub fn copy_finished(&self) {
        if let Some(copy) = self.copy.lock().expect("not poisoned").take() {
            if let Some(bar) = copy.bar {
                bar.finish_and_clear();
            }
        }
    }

    /// Shows the streaming status; throttled here.
    pub fn streaming(&self, progress: &Progress) {
        let mut display = self.stream.lock().expect("not poisoned");
        let now = Instant::now();
        let rows = progress.stats.inserted + progress.stats.updated + progress.stats.deleted;
        match display.last {
            Some((at, before)) if now.duration_since(at) >= Duration::from_secs(1) => {
                let secs = now.duration_since(at).as_secs_f64();
                let current = rows.saturating_sub(before) as f64 / secs;
                display.rate = if display.rate == 0.0 {
                    current
                } else {
                    0.7 * display.rate + 0.3 * current
                };
                display.last = Some((now, rows));
            }
            None => display.last = Some((now, rows)),
            _ => {}
        }
        let text = format!(
            "lag {} / {:.1}s · {} rows/s · applied {} · {} rows, {} txns",
            bytes(progress.lag_bytes),
            progress.lag_seconds,
            count(display.rate as u64),
            progress.stats.applied_lsn,
            count(rows),
            count(progress.stats.transactions)
        );
        if let Some(bars) = &self.bars {
            let bar = display.bar.get_or_insert_with(|| {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("stream {spinner} {msg}").expect("valid template"),
                );
                bar.enable_steady_tick(Duration::from_millis(250));
                bar
            });
            bar.set_message(text);
        } else if display
            .last_line
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            display.last_line = Some(now);
            eprintln!("stream: {text}");
        }
    }

    /// Ends the streaming display.
    pub fn streaming_finished(&self) {
        if let Some(bar) = self.stream.lock().expect("not poisoned").bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
    }
}
