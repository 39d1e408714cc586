//! Everything the user sees on stderr while pglive works: the library's
//! events as progress bars on a terminal, as plain lines every few seconds
//! otherwise, or as one JSON object per line with `--log-format json`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pglive_migrate::human::{bytes, count};
use pglive_migrate::{CopyEvent, Event, Events, PostDataProgress, Progress, Step, VerifyProgress};
use pglive_postgres::QualifiedName;
use serde_json::{Value, json};

/// How often copy and post-data progress is written as a line when there
/// are no bars.
const COPY_LINE_EVERY: Duration = Duration::from_secs(5);
const STREAM_LINE_EVERY: Duration = Duration::from_secs(10);
/// How often the streaming progress bar's text is renewed.
const STREAM_BAR_EVERY: Duration = Duration::from_millis(100);

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// Bars on a terminal, else plain lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Renders events on stderr.
pub(crate) struct Renderer {
    style: Style,
    bars: Option<MultiProgress>,
    /// Whether `c`/`f` + Enter are read (for the streaming hint).
    keys_listening: bool,
    copy: Mutex<Option<CopyDisplay>>,
    post_data: Mutex<PostDataDisplay>,
    stream: Mutex<StreamDisplay>,
    verify: Mutex<Option<VerifyDisplay>>,
}

/// A verification's progress: the rate counts only what this run read.
struct VerifyDisplay {
    bar: Option<ProgressBar>,
    started: Instant,
    bytes_before: u64,
    last_line: Instant,
}

#[derive(Default)]
struct PostDataDisplay {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

struct CopyDisplay {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    in_flight: HashMap<(QualifiedName, i32), u64>,
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

impl Renderer {
    /// Progress bars when stderr is a terminal and the style is text.
    pub(crate) fn new(style: Style, keys_listening: bool) -> Renderer {
        let bars = (style == Style::Text && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        Renderer {
            style,
            bars,
            keys_listening,
            copy: Mutex::new(None),
            post_data: Mutex::new(PostDataDisplay::default()),
            stream: Mutex::new(StreamDisplay::default()),
            verify: Mutex::new(None),
        }
    }

    /// A line that stays: a stage starting or finishing, a message.
    pub(crate) fn line(&self, level: &str, text: &str, fields: Value) {
        match self.style {
            Style::Json => {
                let mut object = json!({
                    "time": now_seconds(),
                    "level": level,
                    "message": text,
                });
                if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
                    object.extend(fields);
                }
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{object}");
            }
            Style::Text => {
                let text = match level {
                    "warn" => format!("warning: {text}"),
                    "error" => format!("error: {text}"),
                    _ => text.to_owned(),
                };
                match &self.bars {
                    Some(bars) => {
                        let _ = bars.println(&text);
                    }
                    None => eprintln!("{text}"),
                }
            }
        }
    }

    /// A line of the command itself (not of a step).
    pub(crate) fn info(&self, text: &str) {
        self.line("info", text, json!({"event": "note"}));
    }

    /// An error line: the command's last.
    pub(crate) fn error(&self, text: &str) {
        self.line("error", text, json!({"event": "error"}));
    }

    fn note(&self, step: Step, text: &str) {
        self.line(
            "info",
            text,
            json!({"event": "note", "step": step.as_str()}),
        );
    }

    fn copy_started(&self, total: u64) {
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
        *self.copy.lock().expect("not poisoned") = Some(CopyDisplay {
            bar,
            total,
            done: 0,
            in_flight: HashMap::new(),
            started: Instant::now(),
            last_line: Instant::now(),
        });
    }

    fn copy_event(&self, event: &CopyEvent) {
        let mut guard = self.copy.lock().expect("not poisoned");
        let Some(copy) = guard.as_mut() else { return };
        match event {
            CopyEvent::Progress {
                table, part, bytes, ..
            } => {
                copy.in_flight.insert((table.clone(), *part), *bytes);
            }
            CopyEvent::PartDone {
                table, part, bytes, ..
            } => {
                copy.in_flight.remove(&(table.clone(), *part));
                copy.done += bytes;
            }
            _ => {}
        }
        let moved = copy.done + copy.in_flight.values().sum::<u64>();
        let active: Vec<String> = {
            let mut names: Vec<&QualifiedName> = copy.in_flight.keys().map(|(t, _)| t).collect();
            names.sort();
            names.dedup();
            names.into_iter().take(3).map(ToString::to_string).collect()
        };
        if let Some(bar) = &copy.bar {
            bar.set_length(copy.total.max(moved).max(1));
            bar.set_position(moved);
            bar.set_message(active.join(" "));
            return;
        }
        if copy.last_line.elapsed() < COPY_LINE_EVERY {
            return;
        }
        copy.last_line = Instant::now();
        let secs = copy.started.elapsed().as_secs_f64().max(0.001);
        let rate = moved as f64 / secs;
        let eta = (rate > 0.0 && copy.total > moved).then(|| (copy.total - moved) as f64 / rate);
        let text = format!(
            "copy: {} of ~{} ({}/s{}); active: {}",
            bytes(moved),
            bytes(copy.total),
            bytes(rate as u64),
            eta.map(|s| format!(", ETA {s:.0}s")).unwrap_or_default(),
            active.join(", ")
        );
        let fields = json!({
            "event": "copy_progress",
            "step": "copy",
            "bytes": moved,
            "estimated_bytes": copy.total,
            "bytes_per_second": rate as u64,
            "eta_seconds": eta,
            "active": active,
        });
        drop(guard);
        self.line("info", &text, fields);
    }

    fn copy_finished(&self) {
        if let Some(copy) = self.copy.lock().expect("not poisoned").take() {
            if let Some(bar) = copy.bar {
                bar.finish_and_clear();
            }
        }
    }

    /// Shows which post-data object is being built, of how many; a line
    /// at most every few seconds without bars.
    fn post_data(&self, progress: &PostDataProgress) {
        let mut display = self.post_data.lock().expect("not poisoned");
        let text = format!("{} {}", progress.kind, progress.name);
        if let Some(bars) = &self.bars {
            let bar = display.bar.get_or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(progress.total as u64));
                bar.set_style(
                    ProgressStyle::with_template("post-data [{bar:30}] {pos}/{len} {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar
            });
            bar.set_position(progress.started as u64);
            bar.set_message(text);
            if progress.started >= progress.total {
                bar.finish_and_clear();
                display.bar = None;
            }
            return;
        }
        let due = display
            .last_line
            .is_none_or(|t| t.elapsed() >= COPY_LINE_EVERY)
            || progress.started == progress.total;
        if !due {
            return;
        }
        display.last_line = Some(Instant::now());
        drop(display);
        self.line(
            "info",
            &format!(
                "post-data: building {text} ({} of {})",
                progress.started, progress.total
            ),
            json!({
                "event": "post_data_progress",
                "step": "post-data",
                "started": progress.started,
                "total": progress.total,
                "kind": progress.kind,
                "name": progress.name,
            }),
        );
    }

    /// Shows the streaming status; throttled here.
    fn streaming(&self, progress: &Progress) {
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
        // Called for every message: the text is made only when shown.
        let every = match self.bars {
            Some(_) => STREAM_BAR_EVERY,
            None => STREAM_LINE_EVERY,
        };
        if display
            .last_line
            .is_some_and(|t| now.duration_since(t) < every)
        {
            return;
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
            display.last_line = Some(now);
            let bar = display.bar.get_or_insert_with(|| {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("stream {spinner} {msg}").expect("valid template"),
                );
                bar.enable_steady_tick(Duration::from_millis(250));
                bar
            });
            bar.set_message(text);
            return;
        }
        display.last_line = Some(now);
        let fields = json!({
            "event": "streaming",
            "step": "streaming",
            "lag_bytes": progress.lag_bytes,
            "lag_seconds": progress.lag_seconds,
            "rows_per_second": display.rate as u64,
            "applied_lsn": progress.stats.applied_lsn.to_string(),
            "rows": rows,
            "transactions": progress.stats.transactions,
        });
        drop(display);
        self.line("info", &format!("stream: {text}"), fields);
    }

    /// Shows how many parts a verification compared, with its rate and
    /// ETA; a line at most every few seconds without bars, and the last.
    fn verify(&self, progress: &VerifyProgress) {
        let mut guard = self.verify.lock().expect("not poisoned");
        let display = guard.get_or_insert_with(|| VerifyDisplay {
            bar: self.bars.as_ref().map(|bars| {
                let bar = bars.add(ProgressBar::new(progress.bytes.max(1)));
                bar.set_style(
                    ProgressStyle::with_template(
                        "verify [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar
            }),
            started: Instant::now(),
            bytes_before: progress.bytes_done,
            last_line: Instant::now() - COPY_LINE_EVERY,
        });
        let finished = progress.parts_done >= progress.parts;
        if let Some(bar) = &display.bar {
            bar.set_position(progress.bytes_done);
            bar.set_message(format!("{}/{} parts", progress.parts_done, progress.parts));
            if finished {
                bar.finish_and_clear();
                *guard = None;
            }
            return;
        }
        if display.last_line.elapsed() < COPY_LINE_EVERY && !finished {
            return;
        }
        display.last_line = Instant::now();
        let read = progress.bytes_done.saturating_sub(display.bytes_before);
        let rate = read as f64 / display.started.elapsed().as_secs_f64().max(0.001);
        let left = progress.bytes.saturating_sub(progress.bytes_done);
        let eta = (rate > 0.0 && left > 0).then(|| left as f64 / rate);
        let text = format!(
            "verify: {} of {} parts, ~{} of ~{} ({}/s{})",
            progress.parts_done,
            progress.parts,
            bytes(progress.bytes_done),
            bytes(progress.bytes),
            bytes(rate as u64),
            eta.map(|s| format!(", ETA {s:.0}s")).unwrap_or_default(),
        );
        let fields = json!({
            "event": "verify_progress",
            "step": "verify",
            "parts_done": progress.parts_done,
            "parts": progress.parts,
            "bytes": progress.bytes_done,
            "estimated_bytes": progress.bytes,
            "bytes_per_second": rate as u64,
            "eta_seconds": eta,
        });
        if finished {
            *guard = None;
        }
        drop(guard);
        self.line("info", &text, fields);
    }

    fn streaming_finished(&self) {
        if let Some(bar) = self.stream.lock().expect("not poisoned").bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Events for Renderer {
    fn event(&self, event: Event) {
        match event {
            Event::Note { step, text } => self.note(step, &text),
            Event::Warning { step, text } => self.line(
                "warn",
                &text,
                json!({"event": "warning", "step": step.as_str()}),
            ),
            Event::CopyStarted { bytes, .. } => self.copy_started(bytes),
            Event::Copy(event) => self.copy_event(&event),
            Event::CopyFinished => self.copy_finished(),
            Event::PostData(progress) => self.post_data(&progress),
            Event::StreamingStarted { slot } => {
                let hint = if self.keys_listening {
                    "when ready type c + Enter to cut over (f + Enter: fence writes first) \
                     or run `pglive cutover` elsewhere; Ctrl-C pauses"
                } else {
                    "run `pglive cutover` (or Ctrl-C to pause) when ready"
                };
                self.line(
                    "info",
                    &format!("streaming changes from slot {slot:?}; {hint}"),
                    json!({"event": "streaming_started", "step": "streaming", "slot": slot}),
                );
            }
            Event::Streaming(progress) => self.streaming(&progress),
            Event::Verify(progress) => self.verify(&progress),
            Event::StreamingFinished => self.streaming_finished(),
            Event::Reconnecting { reason, delay } => self.line(
                "warn",
                &format!("{reason}; reconnecting in {}s", delay.as_secs()),
                json!({"event": "reconnecting", "step": "streaming", "delay_seconds": delay.as_secs_f64()}),
            ),
            Event::SwitchNow { summary } => {
                // The line an operator waits for goes to stdout.
                println!("switch your application now: the target is complete ({summary})");
                if self.style == Style::Json {
                    self.line(
                        "info",
                        "cutover complete: switch your application now",
                        json!({"event": "switch_now", "step": "cutover", "summary": summary}),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Seconds since the Unix epoch, with milliseconds.
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}
