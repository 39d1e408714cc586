//! Replays the fuzz corpus (`fuzz/corpus/decode/` at the workspace root) and
//! the fixtures made from fuzz findings and by hand (`tests/fixtures/fuzzed/`)
//! through the pgoutput decoder: none may panic, and whatever the decoder
//! accepts must encode back to the same bytes.
//!
//! Each file is laid out as the fuzz target reads it: the first byte picks
//! the context (bits 0-1: protocol version minus one; bit 2: inside a
//! streaming block), the rest is one pgoutput message. The message is also
//! decoded in every other context.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pglive_repl::pgoutput::{Decoder, decode};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Decodes `data` as the fuzz target does, then in every context; returns
/// whether it decoded in its own context.
fn replay(path: &Path, data: &[u8]) -> bool {
    let Some((&context, message)) = data.split_first() else {
        return false;
    };
    let wire = Bytes::copy_from_slice(message);
    let own = (u32::from(context & 3) + 1, context & 4 != 0);
    let mut accepted = false;
    for version in 1..=4 {
        for in_stream in [false, true] {
            if let Ok(decoded) = decode(wire.clone(), version, in_stream) {
                assert_eq!(
                    decoded.to_bytes(),
                    wire,
                    "{}: accepted in version {version}, in_stream {in_stream}, but does not re-encode",
                    path.display()
                );
                accepted |= (version, in_stream) == own;
            }
        }
    }
    accepted
}

fn replay_dir(dir: &Path) -> (usize, usize) {
    let files = files(dir);
    assert!(!files.is_empty(), "no files in {}", dir.display());
    let mut accepted = 0;
    // All messages in a row through one stateful decoder as well.
    let mut decoder = Decoder::new(4);
    for path in &files {
        let data = fs::read(path).unwrap();
        if replay(path, &data) {
            accepted += 1;
        }
        if let Some((_, message)) = data.split_first() {
            let _ = decoder.decode(Bytes::copy_from_slice(message));
        }
    }
    (files.len(), accepted)
}

#[test]
fn fuzz_corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let (total, accepted) = replay_dir(&dir);
    // The seeds are one valid message of each kind; libFuzzer adds others.
    assert!(
        accepted >= 19,
        "only {accepted} of {total} corpus files decode"
    );
}

#[test]
fn fuzzed_fixtures_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzzed");
    replay_dir(&dir);
}
