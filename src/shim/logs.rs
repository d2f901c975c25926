//! The CRI log format the shim writes for kubelet: one line per output line,
//! `<RFC 3339 UTC, nanoseconds> <stdout|stderr> <F|P> <text>\n`.
//!
//! `F` ends a line; `P` marks a partial one: a line longer than [`MAX_LINE`] is cut into `P` pieces ended by
//! an `F`, and output that ends without a newline (at EOF) is written as `P`. kubelet rotates the file by
//! renaming it and asking for a reopen ([`LogFile::reopen`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest line written as one record; longer ones are split (containerd and CRI-O use the same 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A container's log file, shared by its stdout and stderr copiers.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: Option<File>,
    /// Bytes of output dropped since the last warning.
    dropped: u64,
    /// When a dropped write was last warned about.
    warned: Option<std::time::Instant>,
}

/// A log disk that stays full is warned about at most this often.
const WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl LogFile {
    /// Opens (creating or appending to) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_owned(),
            state: Mutex::new(State { file: Some(open(path)?), dropped: 0, warned: None }),
        })
    }

    /// Opens the path again: after kubelet renamed the old file, new lines go to a fresh one.
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = open(&self.path)?;
        self.state.lock().expect("log lock").file = Some(file);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends already formatted records in one write, so lines of stdout and stderr never interleave
    /// mid-record. A failing write (disk full) drops the output rather than stopping the container (the
    /// copier keeps reading, so the container never blocks on a full pipe), as containerd and CRI-O do. A
    /// nearly full disk takes small records and refuses large ones in turn, so the warning comes at most once
    /// a minute, with what was dropped since the last one.
    fn append(&self, records: &[u8]) {
        if records.is_empty() {
            return;
        }
        let mut state = self.state.lock().expect("log lock");
        let State { file: Some(file), dropped, warned } = &mut *state else { return };
        if let Err(err) = write_whole(file, records) {
            *dropped += records.len() as u64;
            if warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                tracing::warn!(path = %self.path.display(), error = %err, dropped_bytes = *dropped, "cannot write the container log; output that does not fit is dropped (said at most once a minute)");
                *warned = Some(std::time::Instant::now());
                *dropped = 0;
            }
        }
    }
}

/// Writes `records` whole or not at all: when a write stops short and the rest fails (the disk filled
/// mid-record), the piece already written is cut off again, so kubelet never reads a record without its
/// newline, glued to the next one.
fn write_whole(file: &mut File, records: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < records.len() {
        let failed = match file.write(&records[written..]) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => err,
        };
        if written > 0 {
            // Appending under the lock: the file ends with the piece this call wrote.
            let _ = file.metadata().and_then(|meta| file.set_len(meta.len().saturating_sub(written as u64)));
        }
        return Err(failed);
    }
    Ok(())
}

/// Turns one stream's raw output into CRI records, keeping an unfinished line between reads.
#[derive(Debug)]
pub struct LineWriter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineWriter {
    pub fn new(stream: Stream) -> LineWriter {
        LineWriter { stream, pending: Vec::new() }
    }

    /// Feeds output read from the container and writes every complete record to `log`.
    pub fn feed(&mut self, data: &[u8], log: &LogFile) {
        let mut records = Vec::with_capacity(data.len() + 64);
        self.format(data, &timestamp(), &mut records);
        log.append(&records);
    }

    /// At EOF: output left without a newline becomes a partial record.
    pub fn finish(&mut self, log: &LogFile) {
        let mut records = Vec::new();
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            record(&mut records, &timestamp(), self.stream, 'P', &pending);
        }
        log.append(&records);
    }

    fn format(&mut self, mut data: &[u8], time: &str, out: &mut Vec<u8>) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) if self.pending.len() + end <= MAX_LINE => {
                    if self.pending.is_empty() {
                        record(out, time, self.stream, 'F', &data[..end]);
                    } else {
                        self.pending.extend_from_slice(&data[..end]);
                        let line = std::mem::take(&mut self.pending);
                        record(out, time, self.stream, 'F', &line);
                    }
                    data = &data[end + 1..];
                }
                _ => {
                    // No newline within reach: fill the pending line up to the limit, cut a piece if full.
                    let room = MAX_LINE - self.pending.len();
                    let take = room.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == MAX_LINE {
                        // A newline right after a full piece ends the line: write it as F, not P + empty F.
                        if data.first() == Some(&b'\n') {
                            let line = std::mem::take(&mut self.pending);
                            record(out, time, self.stream, 'F', &line);
                            data = &data[1..];
                        } else {
                            let piece = std::mem::take(&mut self.pending);
                            record(out, time, self.stream, 'P', &piece);
                        }
                    }
                }
            }
        }
    }
}

fn record(out: &mut Vec<u8>, time: &str, stream: Stream, tag: char, text: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    out.push(tag as u8);
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    berth_runtime::state::rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], finish: bool) -> Vec<String> {
        let mut writer = LineWriter::new(Stream::Stdout);
        let mut out = Vec::new();
        for chunk in chunks {
            writer.format(chunk, "T", &mut out);
        }
        if finish && !writer.pending.is_empty() {
            let pending = std::mem::take(&mut writer.pending);
            record(&mut out, "T", Stream::Stdout, 'P', &pending);
        }
        String::from_utf8(out).unwrap().lines().map(|l| l.chars().take(40).collect()).collect()
    }

    #[test]
    fn a_full_disk_drops_the_output_and_counts_it() {
        // /dev/full fails every write with ENOSPC.
        let log = LogFile::open(Path::new("/dev/full")).unwrap();
        let mut writer = LineWriter::new(Stream::Stdout);
        writer.feed(b"one\ntwo\n", &log);
        writer.feed(b"three\n", &log);
        let state = log.state.lock().unwrap();
        assert!(state.warned.is_some(), "no warning");
        // The first write (two records) was warned about; the second was dropped since: a timestamp of 30
        // bytes, " stdout F ", the text and a newline.
        assert_eq!(state.dropped, 30 + 10 + 5 + 1, "dropped {} bytes", state.dropped);
    }

    #[test]
    fn complete_lines_are_full_records() {
        assert_eq!(lines(&[b"a\nbc\n"], true), ["T stdout F a", "T stdout F bc"]);
        assert_eq!(lines(&[b"\n"], true), ["T stdout F "]);
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        assert_eq!(lines(&[b"hel", b"lo\nwor", b"ld\n"], true), ["T stdout F hello", "T stdout F world"]);
    }

    #[test]
    fn output_without_a_final_newline_is_partial() {
        assert_eq!(lines(&[b"done\nno newline"], true), ["T stdout F done", "T stdout P no newline"]);
        assert_eq!(lines(&[b"no newline yet"], false), Vec::<String>::new());
    }

    #[test]
    fn long_lines_are_cut_at_16_kib() {
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.push(b'\n');
        let mut writer = LineWriter::new(Stream::Stderr);
        let mut out = Vec::new();
        writer.format(&long[..5000], "T", &mut out);
        writer.format(&long[5000..], "T", &mut out);
        let text = String::from_utf8(out).unwrap();
        let records: Vec<&str> = text.lines().collect();
        assert_eq!(records.len(), 3);
        assert!(records[0].starts_with("T stderr P xxx") && records[0].len() == "T stderr P ".len() + MAX_LINE);
        assert!(records[1].starts_with("T stderr P ") && records[1].len() == "T stderr P ".len() + MAX_LINE);
        assert_eq!(records[2], "T stderr F xxxxxxxxxx");
    }

    #[test]
    fn a_newline_right_after_a_full_piece_ends_the_line() {
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let text = lines(&[&exact], true);
        assert_eq!(text.len(), 1);
        assert!(text[0].starts_with("T stdout F yyy"));
    }

    #[test]
    fn reopen_starts_a_new_file_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let log = LogFile::open(&path).unwrap();
        let mut writer = LineWriter::new(Stream::Stdout);
        writer.feed(b"first\n", &log);
        std::fs::rename(&path, dir.path().join("c/0.log.1")).unwrap();
        log.reopen().unwrap();
        writer.feed(b"second\n", &log);
        let old = std::fs::read_to_string(dir.path().join("c/0.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.ends_with(" stdout F first\n") && !old.contains("second"), "{old}");
        assert!(new.ends_with(" stdout F second\n") && !new.contains("first"), "{new}");
        assert!(new.starts_with("20") && new.as_bytes()[29] == b'Z', "{new}");
    }
}
