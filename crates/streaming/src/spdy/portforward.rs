//! Port-forward over SPDY (`portforward.k8s.io`): the client opens a data and an error stream per
//! connection, both with `port` and `requestID` headers; once both of a pair exist, the backend dials the
//! port and bytes are copied both ways. Many pairs run at once on one session, which lasts until the
//! client closes it (or it idles out).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::conn::{Connection, Stream, StreamReader, StreamWriter};
use super::frame::rst;
use crate::activity::Activity;
use crate::backend::Backend;
use crate::config::Config;

pub const PROTOCOLS: &[&str] = &["portforward.k8s.io"];

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<Instant>,
}

pub async fn serve(
    mut conn: Connection,
    pod_sandbox_id: String,
    backend: Arc<dyn Backend>,
    config: &Config,
    activity: Activity,
) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(config.stream_creation_timeout.min(std::time::Duration::from_secs(1)));
    loop {
        let stream = tokio::select! {
            stream = conn.accept() => stream,
            _ = sweep.tick() => {
                expire(&mut pending, config);
                continue;
            }
            Some(_) = forwards.join_next() => continue,
            () = activity.idle(config.idle_timeout) => {
                tracing::info!(timeout = ?config.idle_timeout, "port-forward session idle, closing");
                break;
            }
        };
        let Some(stream) = stream else { break };
        let request_id = match stream.header("requestid") {
            Some(id) => id.to_owned(),
            // Clients before requestID paired an error stream with the data stream opened right after it.
            None => match stream.header("streamtype") {
                Some("error") => stream.id.to_string(),
                _ => stream.id.saturating_sub(2).to_string(),
            },
        };
        let pair = pending.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(Instant::now);
        let slot = match stream.header("streamtype") {
            Some("data") => &mut pair.data,
            Some("error") => &mut pair.error,
            other => {
                tracing::debug!(stream_type = ?other, "port-forward: unknown stream type");
                stream.writer.reset(rst::PROTOCOL_ERROR);
                continue;
            }
        };
        if slot.is_some() {
            stream.writer.reset(rst::STREAM_IN_USE);
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let pair = pending.remove(&request_id).expect("the pair was just filled");
            let (data, error) = (pair.data.expect("checked"), pair.error.expect("checked"));
            forwards.spawn(forward(data, error, pod_sandbox_id.clone(), backend.clone()));
        }
    }
    forwards.shutdown().await;
    conn.close(config.close_grace).await;
}

/// Pairs left half-made for longer than the stream creation timeout are refused.
fn expire(pending: &mut HashMap<String, Pair>, config: &Config) {
    pending.retain(|request_id, pair| {
        let fresh = pair.since.is_none_or(|since| since.elapsed() < config.stream_creation_timeout);
        if !fresh {
            tracing::debug!(%request_id, "port-forward: timed out waiting for the other stream of a pair");
            for stream in [pair.data.take(), pair.error.take()].into_iter().flatten() {
                stream.writer.reset(rst::REFUSED_STREAM);
            }
        }
        fresh
    });
}

async fn forward(data: Stream, error: Stream, pod_sandbox_id: String, backend: Arc<dyn Backend>) {
    let port = data.header("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0);
    let result = match port {
        None => Err(format!("invalid port header {:?}", data.header("port").unwrap_or(""))),
        Some(port) => match backend.port_forward(&pod_sandbox_id, port).await {
            Err(err) => Err(format!("error forwarding port {port} to pod {pod_sandbox_id}: {err}")),
            Ok(target) => {
                copy_both_ways(data.reader, data.writer.clone(), target).await;
                Ok(())
            }
        },
    };
    if let Err(message) = result {
        tracing::debug!(%message, "port-forward failed");
        let _ = error.writer.write(Bytes::from(message)).await;
    }
    let _ = data.writer.finish().await;
    let _ = error.writer.finish().await;
}

/// Client → target until the client half-closes (then the target's write half is shut), target → client
/// until the target closes; done when both are.
async fn copy_both_ways(
    mut from_client: StreamReader,
    to_client: StreamWriter,
    target: Box<dyn crate::backend::PortStream>,
) {
    let (mut target_read, mut target_write) = tokio::io::split(target);
    let upstream = async {
        while let Some(chunk) = from_client.read_chunk().await {
            if target_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = target_write.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match target_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.finish().await;
    };
    // The connection is over when the target has closed, whether or not the client half-closed.
    tokio::pin!(upstream, downstream);
    let mut upstream_done = false;
    loop {
        tokio::select! {
            () = &mut upstream, if !upstream_done => upstream_done = true,
            () = &mut downstream => break,
        }
    }
}
