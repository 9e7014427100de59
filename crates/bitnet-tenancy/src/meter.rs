//! Usage metering off the request path, without losing a completed request's row.
//!
//! [`Meter::record`] appends the row to a local append-only journal and hands it to a
//! background task that stores rows in batches. A journal segment is a file of
//! [`SEGMENT_BYTES`] whose blocks are reserved up front (`posix_fallocate`) and which is mapped
//! shared (`MAP_SHARED`): a row is one JSON line copied into the mapping, i.e. into the
//! kernel's page cache, so once `record` returns it survives the process being killed
//! (SIGKILL) without a system call per row; the unused tail of a segment stays zero bytes.
//! (Like a `write(2)` without `fsync`, it does not survive the machine losing power before
//! the kernel writes the page back.) Reserving the blocks first means a full disk is an error
//! when a segment is opened, not a `SIGBUS` on a store into the mapping.
//!
//! Segment files are deleted once every row in them is stored. At start, segments left by a
//! process that died (not locked by a live one) are replayed, up to the first zero byte;
//! inserts skip request ids already stored, so a replay never counts twice.

use crate::error::{Error, Result};
use crate::queued::QueuedRow;
use crate::store::Store;
use crate::usage::{UsageRecord, UsageRow};
use memmap2::{MmapMut, MmapOptions};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// The size of a journal segment (a longer row gets a segment of its own size).
pub const SEGMENT_BYTES: usize = 4 << 20;
/// Rows per database transaction.
const BATCH: usize = 1000;

struct Segment {
    path: PathBuf,
    /// Held open (and locked) until the file is deleted.
    _file: File,
    /// The whole file, mapped shared.
    map: MmapMut,
    /// Rows written but not yet stored.
    outstanding: usize,
    /// Bytes written (the offset of the next row).
    bytes: usize,
}

struct Journal {
    dir: PathBuf,
    current: u64,
    segments: HashMap<u64, Segment>,
    next: u64,
}

impl Journal {
    /// Opens a new segment with room for at least `min` bytes and makes it current.
    fn open_segment(&mut self, min: usize) -> Result<u64> {
        let seq = self.next;
        self.next += 1;
        let path = self.dir.join(format!(
            "usage-{}-{}-{seq}.jsonl",
            std::process::id(),
            crate::now_ms()
        ));
        let jerr = |source| Error::Journal {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(jerr)?;
        file.try_lock().map_err(|e| Error::Journal {
            path: path.clone(),
            source: std::io::Error::other(format!("locking: {e}")),
        })?;
        let len = SEGMENT_BYTES.max(min);
        let map = reserve_and_map(&file, len).map_err(|e| {
            remove_quietly(&path);
            jerr(e)
        })?;
        self.segments.insert(
            seq,
            Segment {
                path,
                _file: file,
                map,
                outstanding: 0,
                bytes: 0,
            },
        );
        self.current = seq;
        Ok(seq)
    }

    /// Marks `n` rows of `seq` stored; deletes a finished, rotated-out segment.
    fn stored(&mut self, seq: u64, n: usize) {
        let done = match self.segments.get_mut(&seq) {
            Some(s) => {
                s.outstanding = s.outstanding.saturating_sub(n);
                s.outstanding == 0 && seq != self.current
            }
            None => false,
        };
        if done {
            if let Some(s) = self.segments.remove(&seq) {
                remove_quietly(&s.path);
            }
        }
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("removing usage journal segment {}: {e}", path.display());
    }
}

struct Shared {
    journal: Mutex<Journal>,
    /// Rows for the writer, each with its journal segment (`u64::MAX`: not journaled).
    tx: RwLock<Option<mpsc::UnboundedSender<(u64, QueuedRow)>>>,
    /// Ends the writer's wait for a batch to gather when the meter closes.
    closing: tokio::sync::Notify,
}

/// The usage meter: journal + batch writer.
pub struct Meter {
    shared: Arc<Shared>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Meter {
    /// Replays what dead processes left in `dir`, then starts the batch writer (needs a
    /// Tokio runtime). `flush` is the longest a row waits before its batch is stored.
    pub async fn open(store: Store, dir: &Path, flush: Duration) -> Result<Meter> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Journal {
            path: dir.to_path_buf(),
            source,
        })?;
        let replayed = replay(&store, dir).await?;
        if replayed > 0 {
            tracing::info!(
                "usage journal {}: replayed {replayed} rows left by a stopped process",
                dir.display()
            );
        }
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            current: 0,
            segments: HashMap::new(),
            next: 0,
        };
        journal.open_segment(0)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            journal: Mutex::new(journal),
            tx: RwLock::new(Some(tx)),
            closing: tokio::sync::Notify::new(),
        });
        let writer = tokio::spawn(write_loop(store, shared.clone(), rx, flush));
        Ok(Meter {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records one request's usage: journaled before this returns, stored soon after.
    pub fn record<'a>(&self, row: impl Into<UsageRow<'a>>) -> Result<()> {
        thread_local! {
            /// The JSON line being written, kept per thread: a fresh `Vec` per row was an
            /// allocation plus growth reallocations and copies on every request (measured with
            /// a uprobe: 2 fewer `realloc` calls per authenticated request with this buffer).
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let row = row.into();
        // The journal write; if it fails (disk full, …) the row still goes to the writer and is
        // stored unless the process dies first — the failure is returned for logging.
        let written = LINE.with(|line| {
            let mut line = line
                .try_borrow_mut()
                .map_err(|_| Error::invalid("meter", "the usage journal line buffer is in use"))?;
            line.clear();
            serde_json::to_writer(&mut *line, &row).map_err(|e| Error::Journal {
                path: PathBuf::from("(usage row)"),
                source: std::io::Error::other(e),
            })?;
            line.push(b'\n');
            self.journal_write(&line)
        });
        let (seq, journaled) = match written {
            Ok(seq) => (seq, Ok(())),
            Err(e) => (u64::MAX, Err(e)),
        };
        let pending = (seq, QueuedRow::new(&row));
        let sent = match self.shared.tx.read() {
            Ok(tx) => tx.as_ref().map(|tx| tx.send(pending).is_ok()),
            Err(_) => None,
        };
        if sent != Some(true) {
            // The writer is gone (shutting down): the row stays in the journal for the next start.
            tracing::warn!("usage meter closed: the row stays in the journal for replay");
        }
        journaled
    }

    /// Appends one line to the current segment; returns the segment.
    fn journal_write(&self, line: &[u8]) -> Result<u64> {
        let mut j = self
            .shared
            .journal
            .lock()
            .map_err(|_| Error::invalid("meter", "the usage journal lock is poisoned"))?;
        let fits = j
            .segments
            .get(&j.current)
            .map(|s| s.map.len() - s.bytes >= line.len());
        match fits {
            // After `close`: later rows go to a new segment, replayed at the next start.
            None => {
                j.open_segment(line.len())?;
            }
            Some(false) => {
                let old = j.current;
                j.open_segment(line.len())?;
                j.stored(old, 0);
            }
            Some(true) => {}
        }
        let seq = j.current;
        let seg = j
            .segments
            .get_mut(&seq)
            .ok_or_else(|| Error::invalid("meter", "no open usage journal segment"))?;
        // Into the shared mapping (the page cache): from here the row survives a SIGKILL.
        let end = seg.bytes + line.len();
        seg.map[seg.bytes..end].copy_from_slice(line);
        seg.bytes = end;
        seg.outstanding += 1;
        Ok(seq)
    }

    /// Stores everything recorded so far and stops the writer; waits at most `timeout`.
    /// Rows not stored by then stay in the journal and are replayed at the next start.
    pub async fn close(&self, timeout: Duration) {
        if let Ok(mut tx) = self.shared.tx.write() {
            tx.take();
        }
        self.shared.closing.notify_one();
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = writer {
            if tokio::time::timeout(timeout, w).await.is_err() {
                tracing::warn!("usage meter: not all rows stored before the deadline; they stay in the journal");
            }
        }
    }
}

async fn write_loop(
    store: Store,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(u64, QueuedRow)>,
    flush: Duration,
) {
    // The rows and, beside them, the journal segment of each.
    let mut batch: Vec<QueuedRow> = Vec::new();
    let mut segs: Vec<u64> = Vec::new();
    let mut closed = false;
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some((seq, r)) => {
                    segs.push(seq);
                    batch.push(r);
                }
                None => break,
            }
            // Let a batch gather for up to `flush`, or until a full batch is waiting (not past
            // the meter closing). Sleeping the whole `flush` before every batch capped the
            // writer at BATCH rows per `flush` (10,000 rows/s at the defaults): above that rate
            // the backlog grew for as long as the load lasted.
            let deadline = tokio::time::Instant::now() + flush;
            while rx.len() + 1 < BATCH {
                let now = tokio::time::Instant::now();
                if now >= deadline || rx.is_closed() {
                    break;
                }
                let step = (deadline - now).min(Duration::from_millis(10));
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = shared.closing.notified() => break,
                }
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok((seq, r)) => {
                    segs.push(seq);
                    batch.push(r);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let rows: Vec<UsageRow> = batch.iter().map(QueuedRow::as_row).collect();
        let mut delay = Duration::from_millis(100);
        loop {
            match store.insert_usage_rows(&rows).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(
                        "storing {} usage rows failed (kept in the journal, retrying in {:.1} s): {e}",
                        batch.len(),
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        drop(rows);
        let mut per_seg: HashMap<u64, usize> = HashMap::new();
        batch.clear();
        for seq in segs.drain(..) {
            *per_seg.entry(seq).or_default() += 1;
        }
        if let Ok(mut j) = shared.journal.lock() {
            for (seq, n) in per_seg {
                j.stored(seq, n);
            }
        }
        if closed && batch.is_empty() && rx.is_empty() {
            break;
        }
    }
    // Everything recorded is stored: the journal is no longer needed.
    if let Ok(mut j) = shared.journal.lock() {
        let all: Vec<u64> = j.segments.keys().copied().collect();
        j.current = u64::MAX;
        for seq in all {
            if j.segments.get(&seq).is_some_and(|s| s.outstanding == 0) {
                j.stored(seq, 0);
            }
        }
    }
}

/// Stores the rows of every journal segment in `dir` that no live process holds, then
/// deletes those files. Returns the rows newly stored.
pub async fn replay(store: &Store, dir: &Path) -> Result<usize> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Journal {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    let mut total = 0;
    for path in paths {
        let jerr = |source| Error::Journal {
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(jerr(e)),
        };
        if file.try_lock().is_err() {
            continue; // a live process owns it
        }
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(jerr)?;
        // A segment's unused tail is zeros (and an older journal has none).
        let used = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let mut rows = Vec::new();
        for (i, line) in bytes[..used].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<UsageRecord>(line) {
                Ok(r) => rows.push(r),
                Err(e) => tracing::warn!(
                    "usage journal {} line {}: skipping an unreadable row ({e})",
                    path.display(),
                    i + 1
                ),
            }
        }
        for chunk in rows.chunks(BATCH) {
            total += store.insert_usage(chunk).await?;
        }
        remove_quietly(&path);
    }
    Ok(total)
}

/// Reserves `len` bytes of disk for `file` (so stores into the mapping never meet a full
/// disk) and maps it shared, pre-faulted.
fn reserve_and_map(file: &File, len: usize) -> std::io::Result<MmapMut> {
    let off = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::other(format!("segment size {len} too large")))?;
    // SAFETY: `file` is an open, writable file for the duration of the call; posix_fallocate
    // only reads the descriptor and the two integers.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the file is created by this process (`create_new`) and locked with an exclusive
    // lock until the segment is dropped, so no other process of ours writes or truncates it
    // while mapped; its length is `len` (just reserved) and is never changed while mapped.
    unsafe { MmapOptions::new().len(len).populate().map_mut(file) }
}
