//! The write-ahead log of the state store.
//!
//! Every change the store accepts is appended here as one record and made durable by
//! [`Wal::sync`] before it is acknowledged. After a crash, [`Wal::open`] reads the records back so
//! the store can replay what its last checkpoint lacks; [`Wal::trim`] drops what a checkpoint has
//! made unnecessary, or [`Wal::detach_closed_upto`] lets whole closed segments go for the caller
//! to delete off its hot path.
//!
//! On disk the log is a directory of segment files `wal-{first_seq:020}.log`, each named by the
//! sequence number of its first record and holding records in strictly increasing sequence order.
//! A record is one checksummed frame (see `frame.rs`) whose key is the record's sequence number.
//!
//! Recovery must never open with wrong state. Damage at the very end of the newest segment with
//! nothing intact behind it is a torn write (a crash in the middle of a write that was never
//! acknowledged) and is cut. Any other damage is reported as [`WalError::Corrupt`]: acknowledged
//! records lie behind it and must not be dropped silently.
//!
//! Threads: the log has one owner (the store's commit thread); nothing in it is shared.

use crate::frame::{encode_frame, intact_frame_after, read_frame, FrameRead};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Magic number of write-ahead log frames: its little-endian bytes spell "STWL". It tells log
/// frames apart from the chain store's and lets a scan past damage find frame boundaries.
const WAL_MAGIC: u32 = 0x4c57_5453;

/// The largest payload a frame can describe (its length field is a `u32`).
///
/// Used when judging damage at open: a frame that is intact but over the configured limit is
/// reported rather than mistaken for a torn tail, and intact records behind damage are found
/// whatever their size.
const FRAME_PAYLOAD_LIMIT: usize = u32::MAX as usize;

/// `ENOSPC` on Linux; the test-only write fault reports it, like a full disk would.
#[cfg(test)]
const ENOSPC: i32 = 28;

/// Tunables of the log.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment file is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Largest record payload accepted (append refuses bigger ones; a bigger length on disk is
    /// corruption).
    pub max_record_bytes: usize,
}

impl Default for WalOptions {
    /// 8 MiB segments, records up to 256 MiB. Whole segments are what leaves the log, so the
    /// segment size bounds what a restart reads only to skip (about one segment beyond the
    /// records the state lacks), and each new segment costs one file creation and directory sync.
    fn default() -> Self {
        WalOptions { segment_bytes: 8 << 20, max_record_bytes: 256 << 20 }
    }
}

impl WalOptions {
    /// The payload limit actually enforced: the configured one, capped by what a frame can hold.
    fn record_limit(&self) -> usize {
        self.max_record_bytes.min(FRAME_PAYLOAD_LIMIT)
    }
}

/// One record read back at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// The record's sequence number (strictly increasing through the log).
    pub seq: u64,
    /// The bytes appended under it.
    pub payload: Vec<u8>,
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("write-ahead log: {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"write"`, `"sync"`, ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Damage that is not a torn tail: the log is never opened past it, because acknowledged
    /// records would be lost.
    #[error("write-ahead log: {} is damaged at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged segment file.
        path: PathBuf,
        /// Offset in it of the first record that cannot be read.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
    },
    /// A record's sequence number did not exceed the previous one.
    #[error("write-ahead log: sequence number {got} does not follow {last}")]
    OutOfOrder {
        /// The sequence number of the last record.
        last: u64,
        /// The sequence number offered.
        got: u64,
    },
    /// A record's payload is over [`WalOptions::max_record_bytes`].
    #[error("write-ahead log: a record of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// An earlier I/O error stopped the log; nothing is retried, because after a failed write or
    /// fdatasync the state of the file is unknown.
    #[error("write-ahead log: stopped by an earlier I/O error")]
    Poisoned,
}

/// Segment files taken out of a [`Wal`] by [`Wal::detach_closed_upto`], still on disk.
#[derive(Debug)]
#[must_use = "the files stay on disk until `remove` is called"]
pub struct DetachedSegments {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl DetachedSegments {
    /// Whether there is nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Deletes the files, oldest first (so a crash midway leaves a contiguous log), then syncs the
    /// directory.
    pub fn remove(self) -> Result<(), WalError> {
        if self.paths.is_empty() {
            return Ok(());
        }
        for path in &self.paths {
            fs::remove_file(path).map_err(io_err("remove", path))?;
        }
        sync_dir(&self.dir)
    }
}

/// One segment file, as the log tracks it.
struct Segment {
    /// Sequence number of its last record, written or queued.
    last_seq: u64,
    /// Path of its file, named by the sequence number of its first record.
    path: PathBuf,
    /// Bytes in its file: written by earlier syncs, or found at open.
    file_bytes: u64,
    /// Frames queued for it and not yet written.
    pending: Vec<u8>,
    /// Handle kept open while the segment is being appended to.
    file: Option<File>,
    /// Whether its directory entry is known durable. A new segment's file is only created at its
    /// first sync, which then syncs the directory too.
    entry_durable: bool,
}

impl Segment {
    /// A segment found at open.
    fn existing(last_seq: u64, path: PathBuf, file_bytes: u64) -> Self {
        Segment { last_seq, path, file_bytes, pending: Vec::new(), file: None, entry_durable: true }
    }

    /// A new segment starting with record `first_seq`; its file does not exist yet.
    fn new(dir: &Path, first_seq: u64) -> Self {
        Segment {
            last_seq: first_seq,
            path: segment_path(dir, first_seq),
            file_bytes: 0,
            pending: Vec::new(),
            file: None,
            entry_durable: false,
        }
    }

    /// Size the segment will have once its queued frames are written.
    fn size(&self) -> u64 {
        self.file_bytes + self.pending.len() as u64
    }
}

/// The write-ahead log: a directory of segment files, appended to by one owner.
///
/// Appends are buffered in memory; [`Wal::sync`] writes them and makes them durable together
/// (group commit). After an I/O error the log refuses all further work ([`WalError::Poisoned`]).
pub struct Wal {
    /// The log's directory.
    dir: PathBuf,
    /// Its tunables.
    options: WalOptions,
    /// Its segments, oldest first.
    segments: Vec<Segment>,
    /// Whether the newest segment takes more records; `trim` closes it.
    accepting: bool,
    /// Sequence number of the last record appended or read at open.
    last_seq: Option<u64>,
    /// Bytes cut from a torn tail at open.
    cut_bytes: u64,
    /// Set by the first I/O error in `sync` or `trim`.
    poisoned: bool,
    /// Test-only fault: writes fail with `ENOSPC` once this many more bytes have been written.
    #[cfg(test)]
    fail_writes_after: Option<u64>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("last_seq", &self.last_seq)
            .field("size_bytes", &self.size_bytes())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens the log in `dir` (created if missing), reads back every intact record in order, and
    /// cuts a torn tail.
    ///
    /// Fails with [`WalError::Corrupt`] on any damage other than a torn tail of the newest
    /// segment, and on records whose sequence numbers do not increase: opening past either would
    /// hand the store a wrong state.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Vec<WalRecord>), WalError> {
        ensure_dir(dir)?;
        let found = list_segments(dir)?;
        let limit = options.record_limit();
        let mut records = Vec::new();
        let mut segments = Vec::new();
        let mut cut_bytes = 0;
        let mut removed_empty = false;
        let count = found.len();
        for (i, (first_seq, path)) in found.into_iter().enumerate() {
            let newest = i + 1 == count;
            let scan = recover_segment(&path, first_seq, newest, limit, &mut records)?;
            cut_bytes += scan.cut_bytes;
            match scan.last_seq {
                Some(last_seq) => segments.push(Segment::existing(last_seq, path, scan.kept_bytes)),
                // An empty segment holds nothing; dropping it keeps every file named by its first
                // record, so a later segment can never collide with it.
                None => {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    removed_empty = true;
                }
            }
        }
        if removed_empty {
            sync_dir(dir)?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments,
            accepting: true,
            last_seq: records.last().map(|r| r.seq),
            cut_bytes,
            poisoned: false,
            #[cfg(test)]
            fail_writes_after: None,
        };
        Ok((wal, records))
    }

    /// Bytes cut from a torn tail at open (0 when the log was clean).
    pub fn cut_bytes(&self) -> u64 {
        self.cut_bytes
    }

    /// Queues a record (buffered in memory); `seq` must be greater than every earlier one.
    ///
    /// Nothing is written until [`Wal::sync`]. A refused record ([`WalError::OutOfOrder`],
    /// [`WalError::TooLarge`]) changes nothing and does not stop the log.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), WalError> {
        self.ensure_usable()?;
        if let Some(last) = self.last_seq.filter(|&last| seq <= last) {
            return Err(WalError::OutOfOrder { last, got: seq });
        }
        let max = self.options.record_limit();
        if payload.len() > max {
            return Err(WalError::TooLarge { len: payload.len(), max });
        }
        let segment = self.segment_for(seq);
        encode_frame(&mut segment.pending, WAL_MAGIC, seq, payload);
        segment.last_seq = seq;
        self.last_seq = Some(seq);
        Ok(())
    }

    /// Writes queued records and makes them durable (one write + one fdatasync: group commit).
    /// After it returns Ok, the records survive a crash.
    ///
    /// A batch that straddles a segment boundary costs one write and one fdatasync per segment,
    /// older segment first, so a crash can only ever lose a suffix of the batch. When it fails,
    /// the log is poisoned and the files are cut back (best effort) to their size before the
    /// call, so the batch, never acknowledged, does not come back at the next open.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.ensure_usable()?;
        let result = self.write_pending();
        self.poison_on_error(result)?;
        self.release_closed_handles();
        Ok(())
    }

    /// Drops records with seq <= `upto` that are no longer needed (after a checkpoint): whole
    /// segment files whose records are all <= upto are deleted; the current segment is closed
    /// first so it can be dropped later. Records <= upto may still be returned by a later open;
    /// callers skip them.
    ///
    /// The closed current segment is deleted at once when all of its records are <= `upto` and
    /// written. Segments with records still queued are kept until a later trim.
    pub fn trim(&mut self, upto: u64) -> Result<(), WalError> {
        self.ensure_usable()?;
        self.accepting = false;
        let result = self.detach_closed_upto(upto).remove();
        self.poison_on_error(result)?;
        self.release_closed_handles();
        Ok(())
    }

    /// Takes out of the log the closed segments whose records are all written and <= `upto`,
    /// without touching the disk; the caller deletes their files with
    /// [`DetachedSegments::remove`], on any thread. Unlike [`Wal::trim`] the current segment
    /// stays open: segments close when they reach [`WalOptions::segment_bytes`], so an owner that
    /// calls this often pays for a new file only once per segment, and no file I/O at all here.
    ///
    /// Files a crash leaves behind before they are removed hold only records <= `upto`; a later
    /// open returns those records and callers skip them, as after [`Wal::trim`].
    pub fn detach_closed_upto(&mut self, upto: u64) -> DetachedSegments {
        let closed = self.segments.len().saturating_sub(usize::from(self.accepting));
        let covered = self.segments[..closed]
            .iter()
            .take_while(|s| s.last_seq <= upto && s.pending.is_empty())
            .count();
        let paths = self.segments.drain(..covered).map(|s| s.path).collect();
        DetachedSegments { dir: self.dir.clone(), paths }
    }

    /// Sequence number of the last appended record, if any (including records read at open).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Total bytes in the log's segment files (records queued and not yet synced excluded).
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_bytes).sum()
    }

    /// Refuses work once an I/O error has stopped the log.
    fn ensure_usable(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Stops the log when `result` is an error: after a failed write or sync the files' state is
    /// unknown, and retrying could acknowledge records that are not durable.
    fn poison_on_error<T>(&mut self, result: Result<T, WalError>) -> Result<T, WalError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// The segment record `seq` goes into, starting a new one when the newest is full or closed.
    fn segment_for(&mut self, seq: u64) -> &mut Segment {
        let start_new = match self.segments.last() {
            Some(newest) => !self.accepting || newest.size() >= self.options.segment_bytes,
            None => true,
        };
        if start_new {
            self.segments.push(Segment::new(&self.dir, seq));
            self.accepting = true;
        }
        let newest = self.segments.len() - 1;
        &mut self.segments[newest]
    }

    /// Writes every segment's queued frames, oldest segment first; on failure cuts the segments
    /// this call wrote back to their earlier sizes.
    fn write_pending(&mut self) -> Result<(), WalError> {
        let mut touched = Vec::new();
        for idx in 0..self.segments.len() {
            if self.segments[idx].pending.is_empty() {
                continue;
            }
            touched.push((idx, self.segments[idx].file_bytes));
            if let Err(error) = self.flush_segment(idx) {
                self.roll_back(&touched);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Writes one segment's queued frames and makes them durable: one write, one fdatasync, and
    /// a directory sync when the file is new (so its existence survives a crash too).
    fn flush_segment(&mut self, idx: usize) -> Result<(), WalError> {
        let path = self.segments[idx].path.clone();
        let mut file = match self.segments[idx].file.take() {
            Some(file) => file,
            None => open_for_append(&path)?,
        };
        self.write_frames(&mut file, idx).map_err(io_err("write", &path))?;
        file.sync_data().map_err(io_err("sync", &path))?;
        if !self.segments[idx].entry_durable {
            sync_dir(&self.dir)?;
        }
        let segment = &mut self.segments[idx];
        segment.entry_durable = true;
        segment.file_bytes += segment.pending.len() as u64;
        segment.pending.clear();
        segment.file = Some(file);
        Ok(())
    }

    /// Writes segment `idx`'s queued frames to `file`.
    fn write_frames(&mut self, file: &mut File, idx: usize) -> io::Result<()> {
        let frames = &self.segments[idx].pending;
        #[cfg(test)]
        if let Some(budget) = self.fail_writes_after {
            // Like a disk filling up: what fits is written, then the write fails.
            let fits = usize::try_from(budget).unwrap_or(usize::MAX);
            if frames.len() > fits {
                file.write_all(&frames[..fits])?;
                self.fail_writes_after = Some(0);
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            self.fail_writes_after = Some(budget - frames.len() as u64);
        }
        file.write_all(frames)
    }

    /// Best effort after a failed sync: cuts the segments it wrote to back to their sizes before
    /// it, so its records (never acknowledged) do not come back at the next open.
    ///
    /// Errors are ignored: the log is poisoned and the caller gets the first error. Should the cut
    /// fail, or a crash come first, some of those records may come back at the next open; that
    /// is allowed, because the caller never got an Ok for them.
    fn roll_back(&mut self, touched: &[(usize, u64)]) {
        for &(idx, len) in touched {
            let segment = &mut self.segments[idx];
            segment.file = None;
            if let Ok(file) = OpenOptions::new().write(true).open(&segment.path) {
                let _ = file.set_len(len).and_then(|()| file.sync_data());
            }
        }
    }

    /// Closes the file handles of segments that take no more records and have nothing queued.
    fn release_closed_handles(&mut self) {
        let open = usize::from(self.accepting);
        let closed = self.segments.len().saturating_sub(open);
        for segment in &mut self.segments[..closed] {
            if segment.pending.is_empty() {
                segment.file = None;
            }
        }
    }
}

/// What reading one segment file at open found.
struct SegmentScan {
    /// Bytes of intact records kept in the file.
    kept_bytes: u64,
    /// Bytes cut from its torn tail.
    cut_bytes: u64,
    /// Sequence number of its last intact record; `None` when it holds none.
    last_seq: Option<u64>,
}

/// Reads segment `path` (named by `first_seq`), appends its records to `records`, and cuts its
/// tail if it is torn.
///
/// `newest` says whether it is the last segment: only there can a torn write be, because a new
/// segment is only started once the older ones are durable.
fn recover_segment(
    path: &Path,
    first_seq: u64,
    newest: bool,
    limit: usize,
    records: &mut Vec<WalRecord>,
) -> Result<SegmentScan, WalError> {
    let buf = fs::read(path).map_err(io_err("read", path))?;
    let mut at = 0;
    let mut last_seq = None;
    loop {
        match read_frame(&buf, at, WAL_MAGIC, limit) {
            FrameRead::Frame { key, payload, next } => {
                let previous = records.last().map(|r| r.seq);
                if let Some(reason) = order_violation(first_seq, last_seq.is_none(), previous, key)
                {
                    return Err(corrupt(path, at, reason));
                }
                records.push(WalRecord { seq: key, payload: payload.to_vec() });
                last_seq = Some(key);
                at = next;
            }
            FrameRead::End => {
                return Ok(SegmentScan { kept_bytes: at as u64, cut_bytes: 0, last_seq });
            }
            FrameRead::Truncated | FrameRead::Corrupt => {
                if let Some(reason) = damage_reason(&buf, at, newest) {
                    return Err(corrupt(path, at, reason));
                }
                cut_tail(path, at as u64)?;
                let cut_bytes = (buf.len() - at) as u64;
                return Ok(SegmentScan { kept_bytes: at as u64, cut_bytes, last_seq });
            }
        }
    }
}

/// Why an intact record with sequence number `key` is out of place, or `None` when it is not.
///
/// `first_in_segment` says it is the segment's first record, which must match the file name;
/// `previous` is the sequence number of the record before it in the whole log.
fn order_violation(
    first_seq: u64,
    first_in_segment: bool,
    previous: Option<u64>,
    key: u64,
) -> Option<&'static str> {
    if first_in_segment && key != first_seq {
        return Some("first record does not match the segment's name");
    }
    if previous.is_some_and(|previous| key <= previous) {
        return Some("sequence numbers do not increase");
    }
    None
}

/// Why the unreadable frame at `at` cannot be cut as a torn tail, or `None` when it can.
fn damage_reason(buf: &[u8], at: usize, newest: bool) -> Option<&'static str> {
    if matches!(read_frame(buf, at, WAL_MAGIC, FRAME_PAYLOAD_LIMIT), FrameRead::Frame { .. }) {
        return Some("record larger than max_record_bytes");
    }
    if !newest {
        return Some("damaged record in a segment that is not the newest");
    }
    if intact_frame_after(buf, at, WAL_MAGIC, FRAME_PAYLOAD_LIMIT) {
        return Some("damaged record followed by intact records");
    }
    None
}

/// A [`WalError::Corrupt`] for `path` at byte `at`.
fn corrupt(path: &Path, at: usize, reason: &'static str) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset: at as u64, reason }
}

/// Cuts file `path` to `len` bytes and makes the cut durable, so a torn tail never reappears
/// after records appended behind it.
fn cut_tail(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_err("open", path))?;
    file.set_len(len).map_err(io_err("truncate", path))?;
    file.sync_data().map_err(io_err("sync", path))
}

/// Opens segment file `path` for appending, creating it when it does not exist.
fn open_for_append(path: &Path) -> Result<File, WalError> {
    OpenOptions::new().append(true).create(true).open(path).map_err(io_err("open", path))
}

/// Creates `dir` when missing, and makes its entry durable: a crash must not lose the directory
/// and every segment in it.
fn ensure_dir(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(parent)
}

/// Syncs directory `dir`, making the creation or removal of files in it durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", dir))
}

/// The segment files in `dir`, ordered by their first sequence number. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            found.push((first_seq, entry.path()));
        }
    }
    found.sort_unstable_by_key(|&(first_seq, _)| first_seq);
    Ok(found)
}

/// Path of the segment whose first record is `first_seq`.
fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("wal-{first_seq:020}.log"))
}

/// The first sequence number in a segment file name `wal-{first_seq:020}.log`, or `None` when
/// `name` is not one.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Wraps an I/O error of operation `op` on `path`.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io { op, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FRAME_OVERHEAD_BYTES;
    use std::ops::RangeInclusive;
    use std::process::Command;
    use tempfile::tempdir;

    /// Options with small records and `segment_bytes` segments.
    fn options(segment_bytes: u64) -> WalOptions {
        WalOptions { segment_bytes, max_record_bytes: 4096 }
    }

    /// A payload whose length and bytes depend on `seq`, so a record read back under a wrong
    /// sequence number would not compare equal.
    fn payload(seq: u64) -> Vec<u8> {
        let len = 3 + (seq as usize * 7) % 41;
        (0..len).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)).collect()
    }

    fn record(seq: u64) -> WalRecord {
        WalRecord { seq, payload: payload(seq) }
    }

    fn records(seqs: impl IntoIterator<Item = u64>) -> Vec<WalRecord> {
        seqs.into_iter().map(record).collect()
    }

    /// Size of the frame holding `record(seq)`.
    fn frame_len(seq: u64) -> usize {
        FRAME_OVERHEAD_BYTES + payload(seq).len()
    }

    /// Writes `record(seq)` for every seq in `seqs`, syncing after every `batch` records.
    fn write_log(dir: &Path, opts: &WalOptions, seqs: RangeInclusive<u64>, batch: usize) {
        let (mut wal, _) = Wal::open(dir, opts.clone()).unwrap();
        for (i, seq) in seqs.enumerate() {
            wal.append(seq, &payload(seq)).unwrap();
            if (i + 1) % batch == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
    }

    fn open(dir: &Path, opts: &WalOptions) -> (Wal, Vec<WalRecord>) {
        Wal::open(dir, opts.clone()).unwrap()
    }

    /// The segment files in `dir`, oldest first.
    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir).unwrap().into_iter().map(|(_, path)| path).collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    /// `(start, seq)` of every frame in a segment's bytes.
    fn frames_in(buf: &[u8]) -> Vec<(usize, u64)> {
        let mut frames = Vec::new();
        let mut at = 0;
        while let FrameRead::Frame { key, next, .. } = read_frame(buf, at, WAL_MAGIC, 4096) {
            frames.push((at, key));
            at = next;
        }
        assert_eq!(at, buf.len(), "test log is intact");
        frames
    }

    /// The path and offset of a `Corrupt` error; panics on anything else.
    fn expect_corrupt(result: Result<(Wal, Vec<WalRecord>), WalError>) -> (PathBuf, u64) {
        match result {
            Err(WalError::Corrupt { path, offset, .. }) => (path, offset),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_across_segments() {
        let dir = tempdir().unwrap();
        let opts = options(256);
        let (mut wal, back) = open(dir.path(), &opts);
        assert!(back.is_empty());
        assert_eq!((wal.last_seq(), wal.size_bytes(), wal.cut_bytes()), (None, 0, 0));
        for seq in 1..=40 {
            wal.append(seq, &payload(seq)).unwrap();
            if seq % 3 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        assert_eq!(wal.last_seq(), Some(40));
        let written = wal.size_bytes();
        drop(wal);

        let files = segment_files(dir.path());
        assert!(files.len() >= 4, "small segments rotate: {files:?}");
        for file in &files {
            let first = frames_in(&fs::read(file).unwrap())[0].1;
            assert_eq!(*file, segment_path(dir.path(), first), "named by its first record");
        }
        let (mut wal, back) = open(dir.path(), &opts);
        assert_eq!(back, records(1..=40));
        assert_eq!((wal.last_seq(), wal.cut_bytes()), (Some(40), 0));
        assert_eq!(wal.size_bytes(), written);
        assert_eq!(written, files.iter().map(|f| file_len(f)).sum::<u64>());

        for seq in 41..=50 {
            wal.append(seq, &payload(seq)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let (wal, back) = open(dir.path(), &opts);
        assert_eq!(back, records(1..=50));
        assert_eq!(wal.last_seq(), Some(50));
    }

    #[test]
    fn unsynced_records_are_not_written() {
        let dir = tempdir().unwrap();
        let opts = options(1 << 20);
        write_log(dir.path(), &opts, 1..=3, 1);
        let (mut wal, _) = open(dir.path(), &opts);
        wal.append(4, &payload(4)).unwrap();
        drop(wal);
        assert_eq!(open(dir.path(), &opts).1, records(1..=3));
    }

    #[test]
    fn torn_tail_at_every_offset_is_cut() {
        let n = 8;
        // One segment holding every record, then one segment per record (the torn record is
        // then alone in its file, which is removed once cut to nothing).
        for segment_bytes in [1 << 20, 1] {
            let opts = options(segment_bytes);
            let src = tempdir().unwrap();
            write_log(src.path(), &opts, 1..=n, 1);
            let last_file = segment_files(src.path()).pop().unwrap();
            let full = file_len(&last_file) as usize;
            let start = full - frame_len(n);
            for keep in start..full {
                let dir = tempdir().unwrap();
                copy_dir(src.path(), dir.path());
                let file = dir.path().join(last_file.file_name().unwrap());
                OpenOptions::new().write(true).open(&file).unwrap().set_len(keep as u64).unwrap();

                let (mut wal, back) = open(dir.path(), &opts);
                assert_eq!(back, records(1..n), "kept {keep} of {full}");
                assert_eq!(wal.cut_bytes(), (keep - start) as u64);
                assert_eq!(wal.last_seq(), Some(n - 1));
                if file.exists() {
                    assert_eq!(file_len(&file), start as u64, "the tail is cut on disk");
                }

                wal.append(n, b"again").unwrap();
                wal.sync().unwrap();
                drop(wal);
                let (wal, back) = open(dir.path(), &opts);
                let mut expected = records(1..n);
                expected.push(WalRecord { seq: n, payload: b"again".to_vec() });
                assert_eq!(back, expected, "the log continues cleanly after a cut at {keep}");
                assert_eq!(wal.cut_bytes(), 0);
            }
        }
    }

    #[test]
    fn zeroed_or_garbage_tail_is_cut() {
        let opts = options(1 << 20);
        for tail in [vec![0u8; 4096], (0..=255u8).cycle().take(1000).collect()] {
            let dir = tempdir().unwrap();
            write_log(dir.path(), &opts, 1..=5, 2);
            let file = segment_files(dir.path()).pop().unwrap();
            let mut bytes = fs::read(&file).unwrap();
            bytes.extend_from_slice(&tail);
            fs::write(&file, bytes).unwrap();
            let (wal, back) = open(dir.path(), &opts);
            assert_eq!(back, records(1..=5));
            assert_eq!(wal.cut_bytes(), tail.len() as u64);
        }
    }

    #[test]
    fn every_bit_flip_is_cut_at_the_tail_or_reported() {
        let n = 6;
        let opts = options(150);
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=n, 2);
        let files = segment_files(dir.path());
        assert!(files.len() >= 2, "damage in older and newest segments is covered");
        for file in &files {
            let original = fs::read(file).unwrap();
            let frames = frames_in(&original);
            for bit in 0..original.len() * 8 {
                let byte = bit / 8;
                let (start, seq) = *frames.iter().rev().find(|(start, _)| *start <= byte).unwrap();
                let mut damaged = original.clone();
                damaged[byte] ^= 1 << (bit % 8);
                fs::write(file, &damaged).unwrap();

                match Wal::open(dir.path(), opts.clone()) {
                    Ok((wal, back)) => {
                        assert_eq!(seq, n, "only the last record may be cut (bit {bit})");
                        assert_eq!(back, records(1..n));
                        assert_eq!(wal.cut_bytes(), frame_len(n) as u64);
                    }
                    Err(WalError::Corrupt { path, offset, .. }) => {
                        assert_ne!(seq, n, "damage to the last record is a torn tail (bit {bit})");
                        assert_eq!((&path, offset), (file, start as u64));
                    }
                    Err(other) => panic!("bit {bit} of {file:?}: {other}"),
                }
                fs::write(file, &original).unwrap();
            }
        }
    }

    #[test]
    fn damaged_length_of_a_middle_record_is_corrupt() {
        let opts = options(1 << 20);
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=5, 5);
        let file = segment_files(dir.path()).pop().unwrap();
        let original = fs::read(&file).unwrap();
        let (start, seq) = frames_in(&original)[2];
        let len = payload(seq).len() as u32;
        let rest = (original.len() - start - FRAME_OVERHEAD_BYTES) as u32;
        // Shorter, a little longer, exactly to the end of the file, past it, over the limit.
        for bad in [len - 1, len + 1, rest, rest + 1, 1 << 31, u32::MAX] {
            let mut damaged = original.clone();
            damaged[start + 4..start + 8].copy_from_slice(&bad.to_le_bytes());
            fs::write(&file, damaged).unwrap();
            let at = expect_corrupt(Wal::open(dir.path(), opts.clone()));
            assert_eq!(at, (file.clone(), start as u64), "length {bad}");
        }
    }

    #[test]
    fn damage_at_the_end_of_an_older_segment_is_corrupt() {
        let opts = options(100);
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=10, 1);
        let files = segment_files(dir.path());
        let older = &files[files.len() - 2];
        let (last_start, _) = *frames_in(&fs::read(older).unwrap()).last().unwrap();
        let len = file_len(older);
        OpenOptions::new().write(true).open(older).unwrap().set_len(len - 3).unwrap();
        let at = expect_corrupt(Wal::open(dir.path(), opts));
        assert_eq!(at, (older.clone(), last_start as u64), "a torn-looking end is not cut there");
    }

    #[test]
    fn record_over_the_limit_on_disk_is_reported_not_cut() {
        let dir = tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), &options(1 << 20));
        wal.append(1, b"small").unwrap();
        wal.append(2, &[7u8; 1000]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let strict = WalOptions { segment_bytes: 1 << 20, max_record_bytes: 500 };
        let (_, offset) = expect_corrupt(Wal::open(dir.path(), strict));
        assert_eq!(offset, (FRAME_OVERHEAD_BYTES + 5) as u64);
        assert_eq!(open(dir.path(), &options(1 << 20)).1.len(), 2, "nothing was cut");
    }

    #[test]
    fn records_out_of_order_on_disk_are_corrupt() {
        let frames = |seqs: &[u64]| {
            let mut buf = Vec::new();
            for &seq in seqs {
                encode_frame(&mut buf, WAL_MAGIC, seq, &payload(seq));
            }
            buf
        };
        let cases: [&[(u64, &[u64])]; 3] = [
            // Decreasing inside a segment.
            &[(5, &[5, 3])],
            // A first record that does not match the file name.
            &[(7, &[6])],
            // A later segment overlapping an earlier one.
            &[(1, &[1, 2, 3]), (2, &[2])],
        ];
        for case in cases {
            let dir = tempdir().unwrap();
            for &(name, seqs) in case {
                fs::write(segment_path(dir.path(), name), frames(seqs)).unwrap();
            }
            expect_corrupt(Wal::open(dir.path(), options(1 << 20)));
        }
    }

    #[test]
    fn empty_segments_and_other_files_are_fine() {
        let opts = options(1 << 20);
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=3, 1);
        fs::write(segment_path(dir.path(), 0), b"").unwrap();
        fs::write(segment_path(dir.path(), 9), b"").unwrap();
        fs::write(dir.path().join("notes.txt"), b"not a segment").unwrap();
        let (mut wal, back) = open(dir.path(), &opts);
        assert_eq!(back, records(1..=3));
        assert_eq!(wal.cut_bytes(), 0);
        wal.append(4, &payload(4)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(dir.path(), &opts).1, records(1..=4));
    }

    #[test]
    fn trim_drops_whole_old_segments() {
        let opts = options(200);
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=30, 1);
        let before: Vec<(PathBuf, u64)> = segment_files(dir.path())
            .into_iter()
            .map(|f| {
                let last = frames_in(&fs::read(&f).unwrap()).last().unwrap().1;
                (f, last)
            })
            .collect();
        let (mut wal, _) = open(dir.path(), &opts);
        wal.trim(15).unwrap();

        let kept: Vec<PathBuf> =
            before.iter().filter(|(_, last)| *last > 15).map(|(f, _)| f.clone()).collect();
        assert!(kept.len() < before.len() && !kept.is_empty());
        assert_eq!(segment_files(dir.path()), kept);
        assert_eq!(wal.size_bytes(), kept.iter().map(|f| file_len(f)).sum::<u64>());
        assert_eq!(wal.last_seq(), Some(30));
        drop(wal);

        let (_, back) = open(dir.path(), &opts);
        let first = back[0].seq;
        assert!(first > 1 && first <= 16, "first kept record {first}");
        assert_eq!(back, records(first..=30));
    }

    #[test]
    fn detach_keeps_the_current_segment_open() {
        let opts = options(200);
        let dir = tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), &opts);
        for seq in 1..=30 {
            wal.append(seq, &payload(seq)).unwrap();
            wal.sync().unwrap();
        }
        let before = segment_files(dir.path());
        assert!(before.len() > 3, "{before:?}");
        let last_of = |f: &PathBuf| frames_in(&fs::read(f).unwrap()).last().unwrap().1;

        // Nothing is covered: nothing detached, no file touched.
        assert!(wal.detach_closed_upto(0).is_empty());
        // Everything is covered: all but the current segment go, which stays open for appends.
        let detached = wal.detach_closed_upto(u64::MAX);
        assert!(!detached.is_empty());
        assert_eq!(segment_files(dir.path()), before, "detaching touches no file");
        detached.remove().unwrap();
        let current = before.last().unwrap().clone();
        assert_eq!(segment_files(dir.path()), vec![current.clone()]);
        wal.append(31, &payload(31)).unwrap();
        wal.sync().unwrap();
        assert_eq!(segment_files(dir.path()), vec![current.clone()], "31 went into it");
        assert_eq!(last_of(&current), 31);
        drop(wal);
        let (_, back) = open(dir.path(), &opts);
        let first = back[0].seq;
        assert_eq!(back, records(first..=31));

        // Partly covered: only whole closed segments at or below `upto` go, and files left on
        // disk (a crash before `remove`) still open as one log.
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=30, 1);
        let files = segment_files(dir.path());
        let (mut wal, _) = open(dir.path(), &opts);
        let upto = 15;
        let detached = wal.detach_closed_upto(upto);
        let gone = files.iter().filter(|f| last_of(f) <= upto).count();
        assert_eq!(detached.paths.len(), gone);
        assert!(detached.paths.iter().all(|f| last_of(f) <= upto));
        drop(detached);
        wal.append(31, &payload(31)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(dir.path(), &opts).1, records(1..=31));
    }

    #[test]
    fn trim_closes_the_current_segment() {
        let opts = options(1 << 20);
        let dir = tempdir().unwrap();
        write_log(dir.path(), &opts, 1..=3, 1);
        let (mut wal, _) = open(dir.path(), &opts);

        wal.trim(0).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1, "nothing is <= 0");
        wal.append(4, &payload(4)).unwrap();
        wal.sync().unwrap();
        let files = segment_files(dir.path());
        assert_eq!(files.last().unwrap(), &segment_path(dir.path(), 4), "a new segment");

        wal.trim(3).unwrap();
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 4)]);

        // A record queued but not yet written is kept, whatever `upto` says.
        wal.append(5, &payload(5)).unwrap();
        wal.trim(100).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, back) = open(dir.path(), &opts);
        assert_eq!(back, records(5..=5));

        // Trimming everything leaves an empty log that continues after the trimmed records.
        wal.trim(5).unwrap();
        assert!(segment_files(dir.path()).is_empty());
        assert_eq!((wal.size_bytes(), wal.last_seq()), (0, Some(5)));
        assert!(matches!(wal.append(5, b"x"), Err(WalError::OutOfOrder { last: 5, got: 5 })));
        wal.append(6, &payload(6)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(dir.path(), &opts).1, records(6..=6));
    }

    #[test]
    fn out_of_order_and_too_large_are_refused() {
        let opts = options(1 << 20);
        let dir = tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), &opts);
        wal.append(5, b"five").unwrap();
        for got in [5, 4, 0] {
            assert!(matches!(
                wal.append(got, b"x"),
                Err(WalError::OutOfOrder { last: 5, got: g }) if g == got
            ));
        }
        assert!(matches!(
            wal.append(6, &[0u8; 4097]),
            Err(WalError::TooLarge { len: 4097, max: 4096 })
        ));
        // Refusals change nothing and do not stop the log.
        wal.append(6, &[0u8; 4096]).unwrap();
        wal.sync().unwrap();
        drop(wal);

        let (mut wal, back) = open(dir.path(), &opts);
        assert_eq!(back.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6]);
        assert!(matches!(wal.append(6, b"x"), Err(WalError::OutOfOrder { last: 6, got: 6 })));
    }

    /// Appends records of `record_len` bytes in batches of three until a sync fails; returns the
    /// records whose sync succeeded and the error.
    fn fill_until_sync_fails(wal: &mut Wal, record_len: usize) -> (Vec<WalRecord>, WalError) {
        let mut acked = Vec::new();
        let mut batch = Vec::new();
        for seq in 1..=1_000_000u64 {
            let payload: Vec<u8> = (0..record_len).map(|i| (seq as usize ^ i) as u8).collect();
            wal.append(seq, &payload).unwrap();
            batch.push(WalRecord { seq, payload });
            if batch.len() == 3 {
                match wal.sync() {
                    Ok(()) => acked.append(&mut batch),
                    Err(error) => return (acked, error),
                }
            }
        }
        panic!("sync never failed");
    }

    /// The failure is a full disk, every later call is refused, and the log reopens with exactly
    /// the acknowledged records.
    fn assert_stopped_by_full_disk(
        mut wal: Wal,
        error: WalError,
        dir: &Path,
        opts: &WalOptions,
        acked: &[WalRecord],
    ) {
        match &error {
            WalError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(ENOSPC)),
            other => panic!("expected an I/O error, got {other}"),
        }
        assert!(error.to_string().starts_with("write-ahead log: "), "{error}");
        let next = acked.last().map_or(1, |r| r.seq) + 100;
        assert!(matches!(wal.append(next, b"x"), Err(WalError::Poisoned)));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
        assert!(matches!(wal.trim(0), Err(WalError::Poisoned)));
        drop(wal);
        let (_, back) = Wal::open(dir, opts.clone()).unwrap();
        assert_eq!(back, acked);
    }

    #[test]
    fn injected_enospc_poisons_and_keeps_exactly_the_synced_records() {
        // Batches of three 44-byte frames into 200-byte segments: some batches straddle two
        // segments, so failures hit the first write, a later one, mid-frame, at frame ends, and
        // in the second segment of a batch whose first segment was already synced.
        let opts = options(200);
        for budget in 0..=700 {
            let dir = tempdir().unwrap();
            let (mut wal, _) = open(dir.path(), &opts);
            wal.fail_writes_after = Some(budget);
            let (acked, error) = fill_until_sync_fails(&mut wal, 20);
            assert_eq!(acked.len() % 3, 0);
            assert_stopped_by_full_disk(wal, error, dir.path(), &opts, &acked);
        }
    }

    /// A tmpfs mounted for a test, unmounted when dropped (also when the test fails).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        /// Mounts a tmpfs of `size` at `at`, or says why it cannot.
        fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
            let output = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at)
                .output()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(format!("mount failed ({}): {}", output.status, stderr.trim()));
            }
            Ok(Tmpfs(at.to_path_buf()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn full_disk_poisons_and_keeps_exactly_the_synced_records() {
        let dir = tempdir().unwrap();
        // Declared after `dir`, so it is unmounted before the directory is removed.
        let _tmpfs = match Tmpfs::mount(dir.path(), "256k") {
            Ok(tmpfs) => tmpfs,
            Err(reason) => {
                println!("skipped the real full-disk test (needs root to mount a tmpfs): {reason}");
                return;
            }
        };
        let opts = WalOptions { segment_bytes: 64 << 10, max_record_bytes: 1 << 20 };
        let (mut wal, _) = open(dir.path(), &opts);
        let (acked, error) = fill_until_sync_fails(&mut wal, 1000);
        println!("the tmpfs filled up after {} records: {error}", acked.len());
        assert!(acked.len() > 100, "the disk filled up early: {} records", acked.len());
        assert_stopped_by_full_disk(wal, error, dir.path(), &opts, &acked);
    }
}
