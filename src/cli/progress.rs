//! Per-layer pull progress for `berth pull`, on stderr: bars redrawn in place on a terminal, plain lines
//! (a layer started, a layer done) when stderr is a file or pipe, so logs stay readable.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use tonic::transport::Channel;

use crate::cri::berth::pulls_client::PullsClient;
use crate::cri::berth::{LayerProgress, WatchPullRequest};

/// Follows the pull of `image` until it ends. Failures only mean no progress is shown.
pub async fn show(mut pulls: PullsClient<Channel>, image: String) {
    let Ok(response) = pulls.watch(WatchPullRequest { image, wait_seconds: 5 }).await else { return };
    let mut stream = response.into_inner();
    let terminal = std::io::stderr().is_terminal();
    let mut renderer = Renderer { terminal, drawn_lines: 0, first_seen: HashMap::new(), reported: HashMap::new() };
    while let Ok(Some(snapshot)) = stream.message().await {
        renderer.draw(&snapshot.layers);
        if snapshot.finished {
            break;
        }
    }
}

struct Renderer {
    terminal: bool,
    drawn_lines: usize,
    first_seen: HashMap<String, Instant>,
    /// Per layer, whether its start (false) or end (true) was already printed in line mode.
    reported: HashMap<String, bool>,
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

impl Renderer {
    fn draw(&mut self, layers: &[LayerProgress]) {
        let now = Instant::now();
        for layer in layers {
            self.first_seen.entry(layer.digest.clone()).or_insert(now);
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            if self.drawn_lines > 0 {
                let _ = write!(err, "\x1b[{}A", self.drawn_lines);
            }
            for layer in layers {
                let _ = writeln!(err, "\x1b[2K{}", self.bar_line(layer, now));
            }
            self.drawn_lines = layers.len();
        } else {
            for layer in layers {
                let seconds = now.duration_since(self.first_seen[&layer.digest]).as_secs_f64();
                match (self.reported.get(&layer.digest).copied(), layer.done) {
                    (None, false) => {
                        let _ = writeln!(err, "{}: downloading {:.1} MB", short(&layer.digest), megabytes(layer.size));
                        self.reported.insert(layer.digest.clone(), false);
                    }
                    (None | Some(false), true) if layer.cached => {
                        let _ = writeln!(err, "{}: already present", short(&layer.digest));
                        self.reported.insert(layer.digest.clone(), true);
                    }
                    (None | Some(false), true) => {
                        let size = megabytes(layer.size);
                        // A layer first seen already done has no meaningful time of its own.
                        let _ = if seconds < 0.05 {
                            writeln!(err, "{}: done, {size:.1} MB", short(&layer.digest))
                        } else {
                            let speed = size / seconds;
                            writeln!(
                                err,
                                "{}: done, {size:.1} MB in {seconds:.2} s ({speed:.1} MB/s)",
                                short(&layer.digest)
                            )
                        };
                        self.reported.insert(layer.digest.clone(), true);
                    }
                    _ => {}
                }
            }
        }
        let _ = err.flush();
    }

    fn bar_line(&self, layer: &LayerProgress, now: Instant) -> String {
        const WIDTH: usize = 30;
        if layer.cached {
            return format!("{}  already present", short(&layer.digest));
        }
        let fraction = if layer.size == 0 { 0.0 } else { layer.bytes as f64 / layer.size as f64 };
        let filled = ((fraction * WIDTH as f64) as usize).min(WIDTH);
        let seconds = now.duration_since(self.first_seen[&layer.digest]).as_secs_f64().max(1e-3);
        let state = if layer.done { "done" } else { "" };
        format!(
            "{}  [{}{}]  {:>7.1}/{:.1} MB  {:>6.1} MB/s  {state}",
            short(&layer.digest),
            "=".repeat(filled),
            " ".repeat(WIDTH - filled),
            megabytes(layer.bytes),
            megabytes(layer.size),
            megabytes(layer.bytes) / seconds
        )
    }
}
