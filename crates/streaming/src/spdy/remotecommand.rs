//! Exec and attach over SPDY: the remotecommand protocols `v5`/`v4.channel.k8s.io`, `v3`, `v2` and
//! `channel.k8s.io`. The client opens one stream per stdio channel, named by its `streamType` header
//! (error, stdin, stdout, stderr, resize); once all that the request asked for exist, the backend runs;
//! when it is done, stdout and stderr are drained and closed, the outcome is written on the error stream
//! (v4+: a `Status` JSON; before: the message, only on failure) and the session goes away.

use std::sync::Arc;

use bytes::Bytes;

use super::conn::{Connection, Stream, StreamWriter};
use super::frame::rst;
use crate::activity::Activity;
use crate::backend::{Backend, Streams};
use crate::config::Config;
use crate::session::{self, CommandRequest, Ended, ResizeDecoder};
use crate::status::Outcome;

/// The remotecommand protocol versions, newest first (the server's preference order).
pub const PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    /// The version a negotiated protocol name means (`""`: a client that named none, i.e. v1).
    pub fn of(protocol: &str) -> Version {
        match protocol {
            "v5.channel.k8s.io" | "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }
}

struct Collected {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Collected {
    fn complete(&self, request: &CommandRequest, version: Version) -> bool {
        self.error.is_some()
            && (!request.stdin() || self.stdin.is_some())
            && (!request.stdout() || self.stdout.is_some())
            && (!request.stderr() || self.stderr.is_some())
            && (!(request.tty() && version >= Version::V3) || self.resize.is_some())
    }
}

pub async fn serve(
    mut conn: Connection,
    protocol: &str,
    request: CommandRequest,
    backend: Arc<dyn Backend>,
    config: &Config,
    activity: Activity,
) {
    let version = Version::of(protocol);
    let mut got = Collected { error: None, stdin: None, stdout: None, stderr: None, resize: None };
    let deadline = tokio::time::sleep(config.stream_creation_timeout);
    tokio::pin!(deadline);
    while !got.complete(&request, version) {
        let stream = tokio::select! {
            stream = conn.accept() => stream,
            () = &mut deadline => {
                tracing::debug!("spdy: client did not create its streams in time");
                if let Some(error) = &got.error {
                    let message = "timed out waiting for client to create streams";
                    let _ = error.writer.write(Bytes::from_static(message.as_bytes())).await;
                }
                conn.close(config.close_grace).await;
                return;
            }
        };
        let Some(stream) = stream else { return };
        let slot = match stream.header("streamtype") {
            Some("error") => &mut got.error,
            Some("stdin") if request.stdin() => &mut got.stdin,
            Some("stdout") if request.stdout() => &mut got.stdout,
            Some("stderr") if request.stderr() => &mut got.stderr,
            Some("resize") if request.tty() => &mut got.resize,
            other => {
                tracing::debug!(stream_type = ?other, "spdy: refusing a stream the request did not ask for");
                stream.writer.reset(rst::REFUSED_STREAM);
                continue;
            }
        };
        if slot.is_some() {
            stream.writer.reset(rst::STREAM_IN_USE);
            continue;
        }
        *slot = Some(stream);
    }
    let Collected { error, stdin, stdout, stderr, resize } = got;
    let error = error.expect("complete() checked the error stream").writer;

    let mut pumps = Vec::new();
    let stdin = stdin.map(|mut stream| {
        let (tx, backend_side, pump) = session::input();
        pumps.push(pump);
        tokio::spawn(async move {
            while let Some(chunk) = stream.reader.read_chunk().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        Box::new(backend_side) as _
    });
    let mut outputs = Vec::new();
    let mut output = |stream: Option<Stream>| {
        stream.map(|stream| {
            let writer = stream.writer.clone();
            let finisher = stream.writer.clone();
            // The peer never sends on an output stream; keep its reader so its FIN is read and dropped.
            let (backend_side, pump) = session::output(
                move |chunk| {
                    let writer = writer.clone();
                    async move { writer.write(chunk).await }
                },
                move || async move {
                    let _ = finisher.finish().await;
                },
            );
            outputs.push(pump);
            Box::new(backend_side) as _
        })
    };
    let stdout = output(stdout);
    let stderr = output(stderr);
    let resize = resize.map(|mut stream| {
        let (mut decoder, rx) = ResizeDecoder::new();
        tokio::spawn(async move {
            while let Some(chunk) = stream.reader.read_chunk().await {
                if !decoder.feed(&chunk).await {
                    tracing::debug!("spdy: resize stream is not JSON");
                    break;
                }
            }
        });
        rx
    });
    let streams = Streams { stdin, stdout, stderr, resize };

    let ended = session::run(&*backend, request, streams, conn.closed(), &activity, config.idle_timeout).await;
    let outcome = match ended {
        Ended::Done(outcome) => outcome,
        Ended::ClientGone => {
            tracing::debug!("spdy: client went away, session dropped");
            abort(pumps);
            return;
        }
        Ended::Idle => {
            tracing::info!(timeout = ?config.idle_timeout, "streaming session idle, closing");
            Outcome::Error(format!("streaming session idle for {:?}, closing", config.idle_timeout))
        }
    };
    // Output first, all of it, then the outcome: the client reads the error stream last.
    for pump in outputs {
        let _ = pump.await;
    }
    write_outcome(&error, version, &outcome).await;
    abort(pumps);
    conn.close(config.close_grace).await;
}

async fn write_outcome(error: &StreamWriter, version: Version, outcome: &Outcome) {
    let body =
        if version >= Version::V4 { Some(outcome.status_json()) } else { outcome.message().map(String::into_bytes) };
    if let Some(body) = body {
        let _ = error.write(Bytes::from(body)).await;
    }
    let _ = error.finish().await;
}

fn abort(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for pump in pumps {
        pump.abort();
    }
}
