//! Fuzz target: the pgoutput decoder must never panic, and whatever it
//! accepts must encode back to the same bytes.
//!
//! Input layout: the first byte picks the context (bits 0-1: protocol
//! version minus one; bit 2: inside a streaming block), the rest is one
//! pgoutput message. `crates/pgwire-repl/tests/fuzz_corpus.rs` replays the
//! corpus the same way.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pglive_repl::pgoutput::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&context, message)) = data.split_first() else {
        return;
    };
    let version = u32::from(context & 3) + 1;
    let in_stream = context & 4 != 0;
    let wire = Bytes::copy_from_slice(message);
    if let Ok(decoded) = decode(wire.clone(), version, in_stream) {
        assert_eq!(decoded.to_bytes(), wire, "accepted input does not re-encode");
    }
});
