//! What a migration reports while it works.
//!
//! The library never prints. Every stage reports through an [`Events`]
//! sink: lines worth showing ([`Event::Note`], [`Event::Warning`]) and
//! progress (copy, post-data, streaming) as values, which a caller renders
//! as bars, lines or JSON, or records.

use std::time::Duration;

use pglive_apply::Progress;
use pglive_schema::PostDataProgress;
use pglive_snapshot::CopyEvent;

/// The step an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Checks before anything is created.
    Preflight,
    /// Publications, slot, roles and the pre-data schema.
    Schema,
    /// The parallel data copy.
    Copy,
    /// Indexes and constraints.
    PostData,
    /// Applying the change stream.
    Streaming,
    /// Tables created on the source while the migration runs.
    Adopt,
    /// A comparison of source and target.
    Verify,
    /// The cutover.
    Cutover,
}

impl Step {
    /// A short lowercase name, as in `pglive status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Schema => "schema",
            Step::Copy => "copy",
            Step::PostData => "post-data",
            Step::Streaming => "streaming",
            Step::Adopt => "adopt",
            Step::Verify => "verify",
            Step::Cutover => "cutover",
        }
    }
}

/// Something a migration, cutover or verification reports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A step began or ended, or something worth a line happened.
    Note {
        /// The step.
        step: Step,
        /// The line, for people.
        text: String,
    },
    /// Something the operator should look at; the work goes on.
    Warning {
        /// The step.
        step: Step,
        /// The warning, for people.
        text: String,
    },
    /// The copy begins: about `bytes` of table data.
    CopyStarted {
        /// Tables that hold rows.
        tables: usize,
        /// Their estimated size on the source.
        bytes: u64,
        /// Parallel workers.
        workers: usize,
    },
    /// A copy worker's progress.
    Copy(CopyEvent),
    /// The copy ended (done or failed).
    CopyFinished,
    /// An index, constraint or other post-data object's build started.
    PostData(PostDataProgress),
    /// Changes stream from `slot`; a cutover may be asked for now.
    StreamingStarted {
        /// The replication slot.
        slot: String,
    },
    /// The applier's positions and counters (about once a second).
    Streaming(Progress),
    /// Streaming paused or ended.
    StreamingFinished,
    /// A connection was lost; streaming reconnects after `delay`.
    Reconnecting {
        /// Why, on one line.
        reason: String,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// A verification compared one more part (or is about to begin).
    Verify(VerifyProgress),
    /// The cutover is complete: the application may switch to the target.
    SwitchNow {
        /// What the cutover did, on one line.
        summary: String,
    },
}

/// How far a verification got, after each part it compared.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyProgress {
    /// Parts compared, including those a stopped verification compared.
    pub parts_done: usize,
    /// Every part.
    pub parts: usize,
    /// Estimated source bytes of the parts compared.
    pub bytes_done: u64,
    /// Estimated source bytes of every part.
    pub bytes: u64,
    /// The table of the part just compared (none before the first).
    pub table: Option<String>,
}

/// Receives a migration's events; called from any task, so it must be
/// cheap and must not block.
pub trait Events: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> Events for F {
    fn event(&self, event: Event) {
        self(event)
    }
}

/// An [`Events`] that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ignore;

impl Events for Ignore {
    fn event(&self, _event: Event) {}
}

impl<'a> dyn Events + 'a {
    /// Reports a line of `step`.
    pub(crate) fn note(&self, step: Step, text: impl Into<String>) {
        self.event(Event::Note {
            step,
            text: text.into(),
        });
    }

    /// Reports a warning of `step`.
    pub(crate) fn warn(&self, step: Step, text: impl Into<String>) {
        self.event(Event::Warning {
            step,
            text: text.into(),
        });
    }
}
