//! `berth logs [-f] CONTAINER`: a container's CRI log file, read directly (as crictl and kubelet read it),
//! at the path ContainerStatus reports.
//!
//! Each line of the file is `<RFC3339Nano> <stdout|stderr> <P|F> <text>` (the CRI log format, kubelet's
//! `pkg/kubelet/kuberuntime/logs`): `P` lines are pieces of one longer line (split at 16 KiB, or output the
//! container had not ended with a newline yet), joined here per stream until their `F` line. stdout lines
//! go to stdout, stderr lines to stderr. `-f` keeps reading as the file grows, follows a rotation (a new
//! file at the path), and ends once the container is no longer running and the file is drained.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use super::client::{Client, rpc_failed};
use crate::cri::v1::{ContainerState, ContainerStatusRequest, ReopenContainerLogRequest};

/// How often `-f` looks for more output, and for the container's end.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `berth logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    pub container: String,
    /// Keep printing output as the container writes it, until it exits.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines (default: all).
    #[arg(long)]
    pub tail: Option<usize>,
    /// Start each line with its timestamp.
    #[arg(long, short = 't')]
    pub timestamps: bool,
    /// Ask the runtime to reopen the log file first (ReopenContainerLog).
    #[arg(long)]
    pub reopen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a CRI log file.
#[derive(Debug, PartialEq)]
pub struct LogRecord<'a> {
    pub timestamp: &'a [u8],
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line of a CRI log file (without its newline); `None` when it is not in the format.
pub fn parse_record(line: &[u8]) -> Option<LogRecord<'_>> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let timestamp = fields.next().filter(|t| !t.is_empty())?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match fields.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(LogRecord { timestamp, stream, partial, content: fields.next().unwrap_or_default() })
}

/// A whole line of output: its pieces joined, with the timestamp of its first piece.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub timestamp: Vec<u8>,
    pub stream: Stream,
    pub content: Vec<u8>,
    /// Whether the line ended with a newline; a line still partial when the log ends did not.
    pub complete: bool,
}

/// Turns the lines of a log file into whole lines of output, joining partial lines per stream.
#[derive(Debug, Default)]
pub struct LineJoiner {
    /// The unfinished line of stdout and of stderr.
    pending: [Option<LogLine>; 2],
    /// Bytes of a file line whose newline has not been written yet.
    unterminated: Vec<u8>,
}

impl LineJoiner {
    /// Feeds bytes read from the file; calls `emit` for each line of output they finish.
    pub fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(LogLine)) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            if self.unterminated.is_empty() {
                self.line(&bytes[..newline], emit);
            } else {
                let mut line = std::mem::take(&mut self.unterminated);
                line.extend_from_slice(&bytes[..newline]);
                self.line(&line, emit);
            }
            bytes = &bytes[newline + 1..];
        }
        self.unterminated.extend_from_slice(bytes);
    }

    fn line(&mut self, line: &[u8], emit: &mut impl FnMut(LogLine)) {
        let Some(record) = parse_record(line) else {
            // Not a CRI log line (a file written by something else): shown as it is rather than lost.
            emit(LogLine { timestamp: Vec::new(), stream: Stream::Stdout, content: line.to_vec(), complete: true });
            return;
        };
        let slot = &mut self.pending[record.stream as usize];
        let mut joined = slot.take().unwrap_or_else(|| LogLine {
            timestamp: record.timestamp.to_vec(),
            stream: record.stream,
            content: Vec::new(),
            complete: false,
        });
        joined.content.extend_from_slice(record.content);
        if record.partial {
            *slot = Some(joined);
        } else {
            joined.complete = true;
            emit(joined);
        }
    }

    /// At the end of the log: a file line without its newline, then whatever partial lines are left, as
    /// they are (the container's output did not end them).
    pub fn finish(&mut self, emit: &mut impl FnMut(LogLine)) {
        let unterminated = std::mem::take(&mut self.unterminated);
        if !unterminated.is_empty() {
            self.line(&unterminated, emit);
        }
        for slot in &mut self.pending {
            if let Some(line) = slot.take() {
                emit(line);
            }
        }
    }
}

/// Writes lines to stdout and stderr.
struct Printer {
    timestamps: bool,
}

impl Printer {
    fn print(&self, line: &LogLine) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(line.timestamp.len() + line.content.len() + 2);
        if self.timestamps && !line.timestamp.is_empty() {
            text.extend_from_slice(&line.timestamp);
            text.push(b' ');
        }
        text.extend_from_slice(&line.content);
        if line.complete {
            text.push(b'\n');
        }
        match line.stream {
            Stream::Stdout => std::io::stdout().lock().write_all(&text),
            Stream::Stderr => std::io::stderr().lock().write_all(&text),
        }
    }

    fn flush(&self) -> std::io::Result<()> {
        std::io::stdout().flush()?;
        std::io::stderr().flush()
    }
}

/// Feeds everything readable from `file` to the joiner, printing (or, for `--tail`, keeping) what it
/// finishes. Returns how many bytes were read.
fn drain(
    file: &mut File,
    joiner: &mut LineJoiner,
    sink: &mut impl FnMut(LogLine) -> std::io::Result<()>,
) -> Result<usize, LogsError> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let count = match file.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(count) => count,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(LogsError::Read(err)),
        };
        total += count;
        let mut failed = None;
        joiner.feed(&buffer[..count], &mut |line| {
            if failed.is_none() {
                failed = sink(line).err();
            }
        });
        if let Some(err) = failed {
            return Err(LogsError::Write(err));
        }
    }
}

#[derive(Debug)]
enum LogsError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl LogsError {
    /// A reader that went away (`berth logs | head`) ends the command quietly.
    fn into_result(self, path: &str) -> Result<(), String> {
        match self {
            LogsError::Write(err) if err.kind() == ErrorKind::BrokenPipe => Ok(()),
            LogsError::Write(err) => Err(format!("cannot write the logs: {err}")),
            LogsError::Read(err) => Err(format!("cannot read log file {path}: {err}")),
        }
    }
}

/// `berth logs`.
pub async fn run(mut client: Client, args: LogsArgs) -> Result<(), String> {
    if args.reopen {
        let request = ReopenContainerLogRequest { container_id: args.container.clone() };
        client.runtime.reopen_container_log(request).await.map_err(|s| rpc_failed("ReopenContainerLog", s))?;
    }
    let status = client
        .runtime
        .container_status(ContainerStatusRequest { container_id: args.container.clone(), verbose: false })
        .await
        .map_err(|s| rpc_failed("ContainerStatus", s))?
        .into_inner()
        .status
        .unwrap_or_default();
    if status.log_path.is_empty() {
        return Err(format!("container {} has no log path", args.container));
    }
    let path = status.log_path;
    let mut file = File::open(&path).map_err(|err| format!("cannot open log file {path}: {err}"))?;
    let printer = Printer { timestamps: args.timestamps };
    let mut joiner = LineJoiner::default();

    // The file as it is now: printed, or with --tail only its last lines.
    let read_now = match args.tail {
        Some(keep) => {
            let mut last = VecDeque::with_capacity(keep.min(10_000));
            let mut keep_last = |line: LogLine| {
                if keep > 0 {
                    if last.len() == keep {
                        last.pop_front();
                    }
                    last.push_back(line);
                }
                Ok(())
            };
            let read = drain(&mut file, &mut joiner, &mut keep_last);
            if !args.follow {
                joiner.finish(&mut |line| {
                    let _ = keep_last(line);
                });
            }
            read.and_then(|_| last.iter().try_for_each(|line| printer.print(line)).map_err(LogsError::Write))
        }
        None => drain(&mut file, &mut joiner, &mut |line| printer.print(&line)).map(|_| ()),
    };
    if let Err(err) = read_now.and_then(|()| printer.flush().map_err(LogsError::Write)) {
        return err.into_result(&path);
    }
    if args.follow {
        if let Err(err) = follow(&mut client, &args.container, &path, file, &mut joiner, &printer).await {
            return err.into_result(&path);
        }
    }
    let mut failed = None;
    joiner.finish(&mut |line| {
        if failed.is_none() {
            failed = printer.print(&line).err();
        }
    });
    match failed.or_else(|| printer.flush().err()) {
        Some(err) => LogsError::Write(err).into_result(&path),
        None => Ok(()),
    }
}

/// Prints what is appended to the log until the container is not running any more (or is gone) and the
/// file is drained. A new file at the path (kubelet rotated the log and the runtime reopened it) is read
/// from its start once the old one is drained.
async fn follow(
    client: &mut Client,
    container: &str,
    path: &str,
    mut file: File,
    joiner: &mut LineJoiner,
    printer: &Printer,
) -> Result<(), LogsError> {
    let mut sink = |line: LogLine| printer.print(&line);
    loop {
        if drain(&mut file, joiner, &mut sink)? > 0 {
            printer.flush().map_err(LogsError::Write)?;
            continue;
        }
        if let Some(rotated) = rotated(path, &file) {
            file = rotated;
            continue;
        }
        if !still_running(client, container).await {
            // Whatever was written between the last read and the exit.
            drain(&mut file, joiner, &mut sink)?;
            return printer.flush().map_err(LogsError::Write);
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// The file now at `path`, when it is another one than `current`.
fn rotated(path: &str, current: &File) -> Option<File> {
    let now = std::fs::metadata(path).ok()?;
    let open = current.metadata().ok()?;
    if (now.dev(), now.ino()) == (open.dev(), open.ino()) {
        return None;
    }
    File::open(path).ok()
}

/// Whether the container may still write: running or not yet started. An error (the container was
/// removed, the daemon is gone) ends the follow.
async fn still_running(client: &mut Client, container: &str) -> bool {
    let request = ContainerStatusRequest { container_id: container.to_owned(), verbose: false };
    match client.runtime.container_status(request).await {
        Ok(answer) => {
            let state = answer.into_inner().status.map(|s| s.state).unwrap_or_default();
            state == ContainerState::ContainerRunning as i32 || state == ContainerState::ContainerCreated as i32
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&str]) -> Vec<(Stream, String, bool)> {
        let mut joiner = LineJoiner::default();
        let mut out = Vec::new();
        let mut emit = |line: LogLine| {
            out.push((line.stream, String::from_utf8(line.content).unwrap(), line.complete));
        };
        for chunk in chunks {
            joiner.feed(chunk.as_bytes(), &mut emit);
        }
        joiner.finish(&mut emit);
        out
    }

    #[test]
    fn records_parse_in_the_cri_log_format() {
        let record = parse_record(b"2026-11-25T15:04:05.123456789Z stdout F hello world").unwrap();
        assert_eq!(record.timestamp, b"2026-11-25T15:04:05.123456789Z");
        assert_eq!((record.stream, record.partial, record.content), (Stream::Stdout, false, &b"hello world"[..]));
        let record = parse_record(b"2026-11-25T15:04:05Z stderr P  two  spaces ").unwrap();
        assert_eq!((record.stream, record.partial, record.content), (Stream::Stderr, true, &b" two  spaces "[..]));
        assert_eq!(parse_record(b"2026-11-25T15:04:05Z stdout F").unwrap().content, b"", "an empty line");
        assert!(parse_record(b"2026-11-25T15:04:05Z stdin F x").is_none());
        assert!(parse_record(b"2026-11-25T15:04:05Z stdout X x").is_none());
        assert!(parse_record(b"plain text").is_none());
    }

    #[test]
    fn partial_lines_join_per_stream() {
        let log = "t1 stdout P abc\nt2 stderr F err line\nt3 stdout P def\nt4 stdout F ghi\nt5 stdout F next\n";
        assert_eq!(
            lines(&[log]),
            [
                (Stream::Stderr, "err line".to_owned(), true),
                (Stream::Stdout, "abcdefghi".to_owned(), true),
                (Stream::Stdout, "next".to_owned(), true),
            ]
        );
    }

    #[test]
    fn a_joined_line_keeps_its_first_timestamp() {
        let mut joiner = LineJoiner::default();
        let mut out = Vec::new();
        joiner.feed(b"t1 stdout P a\nt2 stdout F b\n", &mut |line| out.push(line));
        assert_eq!(out[0].timestamp, b"t1");
    }

    #[test]
    fn file_lines_split_across_reads_are_joined_first() {
        assert_eq!(
            lines(&["t1 std", "out F hel", "lo\nt2 stdout F world\n"]),
            [(Stream::Stdout, "hello".to_owned(), true), (Stream::Stdout, "world".to_owned(), true)]
        );
    }

    #[test]
    fn output_without_a_final_newline_is_printed_without_one() {
        assert_eq!(
            lines(&["t1 stdout F one\nt2 stdout P no newline\n"]),
            [(Stream::Stdout, "one".to_owned(), true), (Stream::Stdout, "no newline".to_owned(), false)]
        );
        // A last file line the writer had not finished yet still counts once the log ends.
        assert_eq!(lines(&["t1 stdout F cut"]), [(Stream::Stdout, "cut".to_owned(), true)]);
    }

    #[test]
    fn lines_not_in_the_format_are_shown_as_they_are() {
        assert_eq!(lines(&["garbage\n"]), [(Stream::Stdout, "garbage".to_owned(), true)]);
    }
}
