//! The CopyBoth stream that `START_REPLICATION` opens.
//!
//! A background task owns the socket. It reads in large chunks, frames the
//! messages, and hands them to the [`ReplicationStream`] in batches through a
//! bounded channel: when the consumer falls behind, the channel fills, the
//! task stops reading, and TCP pushes back on the server. Meanwhile the task
//! keeps the connection alive on its own: it answers keepalives that ask for a
//! reply and sends a status update every [`StreamOptions::status_interval`],
//! even while the consumer is busy.
//!
//! The position confirmed to the server (the status update's flush and apply
//! fields) is never more than what the caller reported with
//! [`Feedback::set_flushed`]: the server may discard WAL up to it, so report
//! only what is durably applied.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_core::Stream;
use postgres_protocol::message::frontend;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::ReplicationClient;
use crate::error::{Error, Result};
use crate::wire::Wire;
use pglive_postgres::{Lsn, PgTimestamp};

/// Tuning of a [`ReplicationStream`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// How often to send a status update when nothing else prompts one. Keep
    /// it well under the server's `wal_sender_timeout` (60 s by default).
    pub status_interval: Duration,
    /// How many bytes of messages may wait for the consumer before the task
    /// stops reading the socket. The default, 64 MiB, lets the server keep
    /// decoding while the consumer applies a large batch.
    pub max_buffered_bytes: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            status_interval: Duration::from_secs(10),
            max_buffered_bytes: 64 << 20,
        }
    }
}

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// WAL data: for a logical slot, one pgoutput message (decode it with
    /// [`crate::pgoutput::Decoder`]).
    XLogData {
        /// The WAL position of the data.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server's clock when it sent the message.
        server_time: PgTimestamp,
        /// The payload, a slice of the read buffer (no copy).
        data: Bytes,
    },
    /// A keepalive: the server's end of WAL and clock. When the consumer has
    /// nothing unapplied, it may report `wal_end` as flushed so the slot
    /// advances while the source writes nothing the publication covers.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server's clock.
        server_time: PgTimestamp,
        /// Whether the server asked for an immediate reply (already sent).
        reply_requested: bool,
    },
}

#[derive(Debug, Default)]
struct Shared {
    flushed: AtomicU64,
    received: AtomicU64,
    server_wal_end: AtomicU64,
    server_time: AtomicI64,
    send_now: Notify,
    request_reply: std::sync::atomic::AtomicBool,
}

/// A cloneable handle to report progress to the server and read the
/// stream's positions, usable from any task.
#[derive(Clone, Debug)]
pub struct Feedback(Arc<Shared>);

impl Feedback {
    /// Reports that everything up to `lsn` is durably applied; the next status
    /// update confirms it to the server. Positions only move forward.
    pub fn set_flushed(&self, lsn: Lsn) {
        self.0.flushed.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// The highest position reported with [`Feedback::set_flushed`].
    pub fn flushed(&self) -> Lsn {
        Lsn(self.0.flushed.load(Ordering::Acquire))
    }

    /// The highest WAL position received so far (from data or keepalives).
    pub fn received(&self) -> Lsn {
        Lsn(self.0.received.load(Ordering::Acquire))
    }

    /// The server's end of WAL at its last message.
    pub fn server_wal_end(&self) -> Lsn {
        Lsn(self.0.server_wal_end.load(Ordering::Acquire))
    }

    /// The server's clock at its last message.
    pub fn server_time(&self) -> PgTimestamp {
        PgTimestamp(self.0.server_time.load(Ordering::Acquire))
    }

    /// Sends a status update now instead of at the next interval.
    pub fn send_now(&self) {
        self.0.send_now.notify_one();
    }

    /// Sends a status update now that asks the server to answer with a
    /// keepalive, which tells its current end of WAL.
    pub fn request_reply(&self) {
        self.0.request_reply.store(true, Ordering::Release);
        self.0.send_now.notify_one();
    }
}

/// Delivered messages, with the share of the byte budget they hold until
/// the consumer moves past them.
type Batch = (Result<Vec<ReplicationEvent>>, Option<OwnedSemaphorePermit>);

/// How long a read waits for more data when little has arrived.
const GATHER_PATIENCE: Duration = Duration::from_millis(1);
/// How much data is a batch worth delivering at once.
const GATHER_ENOUGH: usize = 64 * 1024;

/// What a message costs the budget besides its payload: the event itself.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<ReplicationEvent>();

/// The stream of WAL data from `START_REPLICATION`; a
/// [`futures_core::Stream`] of [`ReplicationEvent`]s. Dropping it closes the
/// connection; [`ReplicationStream::stop`] ends it politely and gives the
/// connection back.
#[derive(Debug)]
pub struct ReplicationStream {
    batches: mpsc::UnboundedReceiver<Batch>,
    current: std::vec::IntoIter<ReplicationEvent>,
    /// The budget the current batch holds.
    current_permit: Option<OwnedSemaphorePermit>,
    feedback: Feedback,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<ReplicationClient>>>,
}

impl ReplicationStream {
    pub(crate) fn spawn(client: ReplicationClient, start: Lsn, options: StreamOptions) -> Self {
        let shared = Arc::new(Shared::default());
        shared.received.store(start.0, Ordering::Release);
        let (tx, rx) = mpsc::unbounded_channel();
        // A share of the budget is asked for as a u32.
        let budget = options
            .max_buffered_bytes
            .clamp(1 << 16, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (wire, parameters) = client.into_parts();
        let task = StreamTask {
            wire,
            parameters,
            shared: Arc::clone(&shared),
            pending: Vec::new(),
            pending_bytes: 0,
            budget: Arc::new(Semaphore::new(budget)),
            budget_size: budget,
            stopping: false,
        };
        let handle = tokio::spawn(task.run(tx, stop_rx, options.status_interval));
        ReplicationStream {
            batches: rx,
            current: Vec::new().into_iter(),
            current_permit: None,
            feedback: Feedback(shared),
            stop: Some(stop_tx),
            task: Some(handle),
        }
    }

    /// The handle for reporting the flushed position and reading positions.
    pub fn feedback(&self) -> Feedback {
        self.feedback.clone()
    }

    /// Ends streaming: sends a last status update with the flushed position,
    /// tells the server to stop (CopyDone), discards what is still in
    /// flight, and returns the connection ready for more commands (for
    /// example `DROP_REPLICATION_SLOT`).
    pub async fn stop(mut self) -> Result<ReplicationClient> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Unblock a task waiting for room in the channel.
        self.batches.close();
        while self.batches.recv().await.is_some() {}
        let task = self.task.take().ok_or(Error::StreamEnded)?;
        task.await.unwrap_or(Err(Error::StreamEnded))
    }
}

impl Stream for ReplicationStream {
    type Item = Result<ReplicationEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.current.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            // The previous batch is consumed: give its budget back.
            self.current_permit = None;
            match ready!(self.batches.poll_recv(cx)) {
                Some((Ok(events), permit)) => {
                    self.current = events.into_iter();
                    self.current_permit = permit;
                }
                Some((Err(error), _)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct StreamTask {
    wire: Wire,
    parameters: HashMap<String, String>,
    shared: Arc<Shared>,
    pending: Vec<ReplicationEvent>,
    /// Bytes of the messages in `pending`.
    pending_bytes: usize,
    /// Bytes that may wait for the consumer.
    budget: Arc<Semaphore>,
    budget_size: usize,
    stopping: bool,
}

/// What reading one chunk of the socket brought.
enum ReadOutcome {
    /// Events (possibly none yet) and whether a keepalive asked for a reply.
    Data { reply_requested: bool },
    /// The server ended the copy (CopyDone), or left copy mode altogether
    /// (CommandComplete, as a shutting-down server may do).
    ServerDone { left_copy_mode: bool },
}

impl StreamTask {
    async fn run(
        mut self,
        tx: mpsc::UnboundedSender<Batch>,
        mut stop: oneshot::Receiver<()>,
        interval: Duration,
    ) -> Result<ReplicationClient> {
        let result = match self.pump(&tx, &mut stop, interval).await {
            Ok(()) => self.finish().await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => Ok(ReplicationClient::from_parts(self.wire, self.parameters)),
            Err(error) if !self.stopping => {
                let _ = tx.send((Err(error), None));
                Err(Error::StreamEnded)
            }
            Err(error) => Err(error),
        }
    }

    /// Reads and delivers until asked to stop or the server ends the copy.
    async fn pump(
        &mut self,
        tx: &mpsc::UnboundedSender<Batch>,
        stop: &mut oneshot::Receiver<()>,
        interval: Duration,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = Arc::clone(&self.shared);
        loop {
            tokio::select! {
                biased;
                requested = &mut *stop => {
                    if requested.is_err() {
                        // The stream was dropped without stop(): just close.
                        return Err(Error::StreamEnded);
                    }
                    self.stopping = true;
                    return Ok(());
                }
                _ = ticker.tick() => self.send_status().await?,
                _ = shared.send_now.notified() => self.send_status().await?,
                permit = Arc::clone(&self.budget).acquire_many_owned(self.pending_share()), if !self.pending.is_empty() => {
                    let permit = permit.map_err(|_| Error::StreamEnded)?;
                    self.deliver(tx, Some(permit))?;
                }
                outcome = self.read_chunk(), if self.pending.is_empty() => {
                    match outcome? {
                        ReadOutcome::Data { reply_requested: true } => self.send_status().await?,
                        ReadOutcome::Data { reply_requested: false } => {}
                        ReadOutcome::ServerDone { left_copy_mode } => {
                            if !self.pending.is_empty() {
                                self.deliver(tx, None)?;
                            }
                            if !left_copy_mode {
                                // Answer the server's CopyDone with ours.
                                frontend::copy_done(&mut self.wire.out);
                                self.wire.flush().await?;
                            }
                            return self.drain_to_ready().await.and(Err(Error::StreamEnded));
                        }
                    }
                }
            }
        }
    }

    /// The budget the pending messages take (at least one permit, at most
    /// the whole budget so that one huge message still passes).
    fn pending_share(&self) -> u32 {
        self.pending_bytes.clamp(1, self.budget_size) as u32
    }

    fn deliver(
        &mut self,
        tx: &mpsc::UnboundedSender<Batch>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<()> {
        let events = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        tx.send((Ok(events), permit))
            .map_err(|_| Error::StreamEnded)
    }

    /// Reads once from the socket and frames every complete message.
    /// Cancel-safe: every await only adds to the read buffer; messages are
    /// taken from it after the last await.
    async fn read_chunk(&mut self) -> Result<ReadOutcome> {
        let mut reply_requested = false;
        self.wire.wait_frame().await?;
        // Let a little more arrive: one batch per millisecond at most.
        self.wire.gather(GATHER_PATIENCE, GATHER_ENOUGH).await?;
        let mut frame = self.wire.next_buffered_frame()?.ok_or_else(|| {
            self.wire
                .protocol("a complete message vanished from the buffer")
        })?;
        loop {
            match frame.tag {
                b'd' => {
                    if let Some(reply) = self.copy_data(frame.body)? {
                        reply_requested |= reply;
                    }
                }
                b'c' => {
                    return Ok(ReadOutcome::ServerDone {
                        left_copy_mode: false,
                    });
                }
                b'C' => {
                    return Ok(ReadOutcome::ServerDone {
                        left_copy_mode: true,
                    });
                }
                b'E' => {
                    return Err(self.wire.server_error(&frame, "replication stream"));
                }
                b'N' => {}
                other => {
                    return Err(self.wire.protocol(format!(
                        "unexpected message {:?} in the replication stream",
                        other as char
                    )));
                }
            }
            match self.wire.next_buffered_frame()? {
                Some(next) => frame = next,
                None => return Ok(ReadOutcome::Data { reply_requested }),
            }
        }
    }

    /// Handles one CopyData message; returns whether a keepalive asked for a
    /// reply, or `None` for XLogData.
    fn copy_data(&mut self, mut body: Bytes) -> Result<Option<bool>> {
        if body.is_empty() {
            return Err(self
                .wire
                .protocol("empty CopyData in the replication stream"));
        }
        match body.get_u8() {
            b'w' if body.len() >= 24 => {
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let server_time = PgTimestamp(body.get_i64());
                self.note_server(wal_end, server_time);
                self.shared
                    .received
                    .fetch_max(wal_start.0, Ordering::AcqRel);
                // Charged to the budget: the message holds its part of the
                // read buffer until the consumer is done with it.
                self.pending_bytes += body.len() + MESSAGE_OVERHEAD;
                self.pending.push(ReplicationEvent::XLogData {
                    wal_start,
                    wal_end,
                    server_time,
                    data: body,
                });
                Ok(None)
            }
            b'k' if body.len() >= 17 => {
                let wal_end = Lsn(body.get_u64());
                let server_time = PgTimestamp(body.get_i64());
                let reply_requested = body.get_u8() == 1;
                self.note_server(wal_end, server_time);
                // Everything before the server's position has been sent to
                // us: report it as written (never as flushed). A server
                // shutting down waits for exactly this before it exits.
                self.shared.received.fetch_max(wal_end.0, Ordering::AcqRel);
                self.pending_bytes += MESSAGE_OVERHEAD;
                self.pending.push(ReplicationEvent::Keepalive {
                    wal_end,
                    server_time,
                    reply_requested,
                });
                Ok(Some(reply_requested))
            }
            kind => Err(self.wire.protocol(format!(
                "malformed or unknown replication message {:?} ({} bytes)",
                kind as char,
                body.len() + 1
            ))),
        }
    }

    fn note_server(&self, wal_end: Lsn, server_time: PgTimestamp) {
        self.shared
            .server_wal_end
            .fetch_max(wal_end.0, Ordering::AcqRel);
        self.shared
            .server_time
            .store(server_time.0, Ordering::Release);
    }

    /// Sends a standby status update: written = received, flushed = applied =
    /// what the caller reported.
    async fn send_status(&mut self) -> Result<()> {
        let flushed = self.shared.flushed.load(Ordering::Acquire);
        let written = self.shared.received.load(Ordering::Acquire).max(flushed);
        let reply = self.shared.request_reply.swap(false, Ordering::AcqRel);
        encode_status_update(
            &mut self.wire.out,
            Lsn(written),
            Lsn(flushed),
            PgTimestamp::now(),
            reply,
        );
        self.wire.flush().await
    }

    /// After a stop request: last status update, CopyDone, then discard what
    /// the server still sends until it is ready for commands again.
    async fn finish(&mut self) -> Result<()> {
        self.send_status().await?;
        frontend::copy_done(&mut self.wire.out);
        self.wire.flush().await?;
        self.drain_to_ready().await
    }

    async fn drain_to_ready(&mut self) -> Result<()> {
        let mut error = None;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'Z' => return error.map_or(Ok(()), Err),
                b'E' => error = Some(self.wire.server_error(&frame, "ending replication")),
                _ => {}
            }
        }
    }
}

/// Writes a Standby Status Update inside a CopyData message.
pub(crate) fn encode_status_update(
    out: &mut bytes::BytesMut,
    written: Lsn,
    flushed: Lsn,
    now: PgTimestamp,
    request_reply: bool,
) {
    out.put_u8(b'd');
    out.put_u32(4 + 1 + 8 * 4 + 1);
    out.put_u8(b'r');
    out.put_u64(written.0);
    out.put_u64(flushed.0);
    out.put_u64(flushed.0);
    out.put_i64(now.0);
    out.put_u8(u8::from(request_reply));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_update_layout() {
        let mut out = bytes::BytesMut::new();
        encode_status_update(&mut out, Lsn(0x10), Lsn(0x08), PgTimestamp(5), false);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &0x10u64.to_be_bytes());
        assert_eq!(&out[14..22], &0x08u64.to_be_bytes());
        assert_eq!(&out[22..30], &0x08u64.to_be_bytes());
        assert_eq!(&out[30..38], &5i64.to_be_bytes());
        assert_eq!(out[38], 0);
    }
}
