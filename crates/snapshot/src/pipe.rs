//! One `COPY … TO STDOUT` streamed into one `COPY … FROM STDIN`.

use std::pin::pin;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::{CopyInSink, CopyOutStream};

use crate::error::{Result, source, target};

/// Bytes of COPY data between two progress reports.
const PROGRESS_EVERY: u64 = 8 << 20;

/// COPY data is forwarded to the target in batches of about this size: the
/// most a pipe holds in memory beside the client's socket buffers.
const BATCH_BYTES: usize = 64 << 10;

/// Streams what `rows` (a started `COPY … TO STDOUT` on the source) sends
/// into `sink` (a started `COPY … FROM STDIN` on the target) in batches of
/// about 64 kB, and finishes the sink; returns the rows the target took
/// and the bytes moved. Memory stays bounded: each batch is awaited into
/// the sink (whose channel holds one message) before more is read, so a
/// slow target slows the reads. `progress` hears `(rows, bytes)` so far
/// every 8 MB; `what` names the data in errors.
pub async fn pipe(
    rows: CopyOutStream,
    sink: CopyInSink<Bytes>,
    what: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u64, u64)> {
    let mut rows = pin!(rows);
    let mut sink = pin!(sink);
    let (mut bytes, mut messages, mut reported) = (0u64, 0u64, 0u64);
    // The server sends one message per row; rows are gathered into
    // batches so the target's connection task wakes once per batch.
    let mut batch = BytesMut::with_capacity(BATCH_BYTES * 2);
    while let Some(chunk) = rows.next().await {
        let chunk = chunk.map_err(source(format!("reading {what}")))?;
        bytes += chunk.len() as u64;
        messages += 1;
        batch.extend_from_slice(&chunk);
        if batch.len() < BATCH_BYTES {
            continue;
        }
        sink.feed(batch.split().freeze())
            .await
            .map_err(target(format!("writing {what}")))?;
        if bytes - reported >= PROGRESS_EVERY {
            reported = bytes;
            progress(messages, bytes);
        }
    }
    if !batch.is_empty() {
        sink.feed(batch.split().freeze())
            .await
            .map_err(target(format!("writing {what}")))?;
    }
    let written = sink
        .as_mut()
        .finish()
        .await
        .map_err(target(format!("writing {what}")))?;
    Ok((written, bytes))
}
