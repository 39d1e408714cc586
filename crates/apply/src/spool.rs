//! Buffers for streamed in-progress transactions.
//!
//! With `streaming` on, the server sends large transactions in blocks
//! before they commit; they may still abort, whole or one subtransaction at
//! a time. Their raw messages wait here, per top-level transaction, until
//! Stream Commit (replayed in order) or Stream Abort (dropped). Past a memory
//! budget the largest buffer moves to a file, so memory stays bounded
//! whatever the transaction sizes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};

/// One spooled message: the (sub)transaction that made it and its bytes.
type Entry = (u32, Bytes);

#[derive(Default)]
struct Spool {
    /// Messages already moved to the file, in order, before `memory`.
    file: Option<(PathBuf, BufWriter<File>)>,
    memory: Vec<Entry>,
    memory_bytes: usize,
    /// Subtransactions aborted after some of their messages were spilled.
    aborted: HashSet<u32>,
}

/// The buffers of all streamed transactions in progress.
pub(crate) struct Spools {
    by_xid: HashMap<u32, Spool>,
    memory_bytes: usize,
    budget: usize,
    dir: PathBuf,
}

fn spill_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Spill {
        path: path.display().to_string(),
        source,
    }
}

impl Spools {
    /// Buffers of up to `budget` bytes in memory, spilling to `dir`; spill
    /// files a killed pglive left in `dir` are removed first.
    pub fn new(budget: usize, dir: PathBuf) -> Spools {
        remove_stale(&dir);
        Spools {
            by_xid: HashMap::new(),
            memory_bytes: 0,
            budget,
            dir,
        }
    }

    /// Whether any streamed transaction is in progress.
    pub fn is_empty(&self) -> bool {
        self.by_xid.is_empty()
    }

    /// Bytes held in memory.
    #[cfg(test)]
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Keeps `data`, made by `subxid`, for top-level transaction `xid`.
    pub fn push(&mut self, xid: u32, subxid: u32, data: Bytes) -> Result<()> {
        let spool = self.by_xid.entry(xid).or_default();
        spool.memory_bytes += data.len();
        self.memory_bytes += data.len();
        spool.memory.push((subxid, data));
        while self.memory_bytes > self.budget {
            let Some((&largest, _)) = self
                .by_xid
                .iter()
                .filter(|(_, s)| s.memory_bytes > 0)
                .max_by_key(|(_, s)| s.memory_bytes)
            else {
                break;
            };
            self.spill(largest)?;
        }
        Ok(())
    }

    fn spill(&mut self, xid: u32) -> Result<()> {
        let spool = self.by_xid.get_mut(&xid).expect("spilled spool exists");
        if spool.file.is_none() {
            let (path, file) = create_private(&self.dir, xid)?;
            spool.file = Some((path, BufWriter::with_capacity(1 << 20, file)));
        }
        let (path, writer) = spool.file.as_mut().expect("just created");
        for (subxid, data) in spool.memory.drain(..) {
            writer
                .write_all(&subxid.to_be_bytes())
                .and_then(|()| writer.write_all(&(data.len() as u64).to_be_bytes()))
                .and_then(|()| writer.write_all(&data))
                .map_err(spill_error(path))?;
        }
        self.memory_bytes -= spool.memory_bytes;
        spool.memory_bytes = 0;
        Ok(())
    }

    /// Drops a whole transaction (`subxid == xid`) or one subtransaction.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            if let Some(spool) = self.by_xid.remove(&xid) {
                self.memory_bytes -= spool.memory_bytes;
                if let Some((path, writer)) = spool.file {
                    drop(writer);
                    let _ = std::fs::remove_file(path);
                }
            }
            return;
        }
        if let Some(spool) = self.by_xid.get_mut(&xid) {
            let before = spool.memory_bytes;
            spool.memory.retain(|(made_by, _)| *made_by != subxid);
            spool.memory_bytes = spool.memory.iter().map(|(_, d)| d.len()).sum();
            self.memory_bytes -= before - spool.memory_bytes;
            if spool.file.is_some() {
                spool.aborted.insert(subxid);
            }
        }
    }

    /// Takes a committed transaction's messages for replay, in order.
    pub fn take(&mut self, xid: u32) -> Result<Replay> {
        let Some(spool) = self.by_xid.remove(&xid) else {
            return Ok(Replay::default());
        };
        self.memory_bytes -= spool.memory_bytes;
        let file = match spool.file {
            Some((path, mut writer)) => {
                writer.flush().map_err(spill_error(&path))?;
                drop(writer);
                let file = File::open(&path).map_err(spill_error(&path))?;
                Some((path, BufReader::with_capacity(1 << 20, file)))
            }
            None => None,
        };
        Ok(Replay {
            file,
            memory: spool.memory.into_iter(),
            aborted: spool.aborted,
        })
    }
}

impl Drop for Spools {
    fn drop(&mut self) {
        for spool in self.by_xid.values_mut() {
            if let Some((path, _)) = spool.file.take() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The prefix of every spill file's name: `pglive-spool-<pid>-…`.
const SPILL_PREFIX: &str = "pglive-spool-";

/// Creates a new spill file for `xid` that only this user may read (the
/// file holds source rows), under a name no other process can have made
/// first: `create_new` refuses an existing file or symbolic link, and the
/// name carries a random part.
fn create_private(dir: &Path, xid: u32) -> Result<(PathBuf, File)> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let path = dir.join(format!(
            "{SPILL_PREFIX}{}-{xid}-{}-{random:016x}.bin",
            std::process::id(),
            unique()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(spill_error(&path)(e)),
        }
    }
}

/// Removes the spill files in `dir` of pglive processes that no longer
/// run (killed before they could remove them). Where `/proc` cannot tell
/// whether a process runs, nothing is removed.
fn remove_stale(dir: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix(SPILL_PREFIX)
            .filter(|_| name.ends_with(".bin"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !proc.join(pid.to_string()).exists() {
            // Another user's file in a shared directory stays (sticky bit).
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A committed streamed transaction's messages, read back in order: first
/// from its spill file, then from memory.
#[derive(Default)]
pub(crate) struct Replay {
    file: Option<(PathBuf, BufReader<File>)>,
    memory: std::vec::IntoIter<Entry>,
    aborted: HashSet<u32>,
}

impl Replay {
    /// The next message, or `None` at the end.
    pub fn next_message(&mut self) -> Result<Option<Bytes>> {
        while let Some((path, reader)) = &mut self.file {
            let mut header = [0u8; 12];
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    let _ = std::fs::remove_file(&*path);
                    self.file = None;
                    break;
                }
                Err(e) => return Err(spill_error(path)(e)),
            }
            let subxid = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
            let len = u64::from_be_bytes(header[4..].try_into().expect("8 bytes")) as usize;
            let mut data = vec![0; len];
            reader.read_exact(&mut data).map_err(spill_error(path))?;
            if !self.aborted.contains(&subxid) {
                return Ok(Some(Bytes::from(data)));
            }
        }
        Ok(self.memory.next().map(|(_, data)| data))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some((path, _)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(replay: &mut Replay) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(m) = replay.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn spills_past_the_budget_and_replays_in_order() {
        let dir = std::env::temp_dir();
        let mut spools = Spools::new(100, dir);
        let messages: Vec<Bytes> = (0..50u8).map(|i| Bytes::from(vec![i; 10])).collect();
        for (i, m) in messages.iter().enumerate() {
            spools
                .push(7, if i % 10 == 3 { 8 } else { 7 }, m.clone())
                .unwrap();
            assert!(spools.memory_bytes() <= 100);
        }
        spools.abort(7, 8);
        let mut replay = spools.take(7).unwrap();
        let expected: Vec<Bytes> = messages
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 != 3)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(drain(&mut replay), expected);
        assert!(spools.is_empty());
    }

    #[test]
    fn whole_abort_drops_everything() {
        let mut spools = Spools::new(15, std::env::temp_dir());
        for i in 0..5u8 {
            spools.push(1, 1, Bytes::from(vec![i; 10])).unwrap();
        }
        spools.abort(1, 1);
        assert!(spools.is_empty());
        assert_eq!(spools.memory_bytes(), 0);
        assert!(drain(&mut spools.take(1).unwrap()).is_empty());
    }

    /// A fresh directory of this test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pglive-spool-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spill_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn spill_files_are_private_and_not_taken_over() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("private");
        let mut spools = Spools::new(10, dir.clone());
        spools.push(1, 1, Bytes::from(vec![1; 100])).unwrap();
        let files = spill_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let metadata = std::fs::metadata(&files[0]).unwrap();
        // Source rows: readable by this user only, whatever the umask.
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{files:?}");
        // The name is not guessable from the process id and xid alone: a
        // second spool of the same transaction gets another name.
        let mut other = Spools::new(10, dir.clone());
        other.push(1, 1, Bytes::from(vec![2; 100])).unwrap();
        let names: Vec<PathBuf> = spill_files(&dir);
        assert_eq!(names.len(), 2, "{names:?}");
        drop(spools);
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_a_killed_process_are_removed_at_start() {
        let dir = scratch("stale");
        // A pid above the kernel's limit (4194304) never runs.
        let stale = dir.join("pglive-spool-9999999-42-0-1a2b.bin");
        let live = dir.join(format!("pglive-spool-{}-42-0-1a2b.bin", std::process::id()));
        let unrelated = dir.join("pglive-spool-notes.txt");
        for path in [&stale, &live, &unrelated] {
            std::fs::write(path, b"rows").unwrap();
        }
        let _spools = Spools::new(10, dir.clone());
        assert!(!stale.exists(), "the dead process's spill file stays");
        assert!(live.exists(), "a running process's file was removed");
        assert!(unrelated.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
