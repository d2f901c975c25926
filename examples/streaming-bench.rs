//! Streaming benchmark over one CRI connection (hack/bench/streaming.sh runs it): in one pod with a `sleep`
//! container and an httpd serving a 100 MB file, it times
//! - the exec round trip: Exec RPC + SPDY connect + `echo` to its exit status (p50/p90 over RUNS),
//! - port-forward throughput: a 100 MB HTTP download from the pod through PortForward + the streaming
//!   session (SPDY, and SPDY tunnelled in WebSocket), median of 3, in MB/s.
//!
//! Usage: streaming-bench ENDPOINT IMAGE [RUNS]

use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use berth::cri::v1::*;
use berth_streaming::client::{PortForwarder, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "bench/mod.rs"]
mod bench;

use bench::{percentile, pod_config, run_sleeping_pod, start_container};

const BIG: usize = 100 * 1000 * 1000;
const HTTP_PORT: u16 = 8080;

/// Downloads `/big` through a fresh port-forward session; returns the bytes of body and the time taken.
async fn download(client: &mut Client, pod: &str, transport: Transport) -> Result<(usize, Duration), String> {
    let request = PortForwardRequest { pod_sandbox_id: pod.to_owned(), port: vec![i32::from(HTTP_PORT)] };
    let url = client.runtime.port_forward(request).await.map_err(|s| s.message().to_owned())?.into_inner().url;
    let began = Instant::now();
    let forwarder = PortForwarder::connect(&url, transport).await.map_err(|e| e.to_string())?;
    let (forwarded, mut app) = tokio::io::duplex(256 * 1024);
    let fetch = async {
        app.write_all(b"GET /big HTTP/1.0\r\nHost: localhost\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut total = 0usize;
        let mut head_end = None;
        let mut head = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = app.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            if head_end.is_none() {
                head.extend_from_slice(&buf[..n]);
                if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    head_end = Some(at + 4);
                    total = head.len() - (at + 4);
                }
            } else {
                total += n;
            }
        }
        Ok::<usize, String>(total)
    };
    let (forwarded_result, fetched) = tokio::join!(forwarder.forward(HTTP_PORT, forwarded), fetch);
    let elapsed = began.elapsed();
    forwarded_result.map_err(|e| e.to_string())?;
    forwarder.close().await;
    Ok((fetched?, elapsed))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = Endpoint::parse(&args[1]).expect("endpoint");
    let image = &args[2];
    let runs: usize = args.get(3).map(|s| s.parse().expect("RUNS")).unwrap_or(100);
    let mut client = Client::connect(endpoint, Duration::from_secs(60)).await.expect("connect");
    let config = pod_config("streaming", 0);
    let (pod, sleeper) = run_sleeping_pod(&mut client, image, config.clone()).await;
    let script = format!(
        "mkdir -p /tmp/www && head -c {BIG} /dev/zero > /tmp/www/big && exec httpd -f -p {HTTP_PORT} -h /tmp/www"
    );
    start_container(&mut client, &pod, config, image, "web", vec!["sh".into(), "-c".into(), script]).await;

    // Exec round trip. Before the daemon implements Exec this reports why and the rest still runs.
    match bench::exec_echo(&mut client, &sleeper, Transport::Spdy).await {
        Err(err) => println!("exec round trip: not measured: {err}"),
        Ok(()) => {
            let mut samples = Vec::with_capacity(runs);
            for _ in 0..runs {
                let began = Instant::now();
                bench::exec_echo(&mut client, &sleeper, Transport::Spdy).await.expect("exec echo");
                samples.push(began.elapsed());
            }
            let (p50, p90) = (percentile(&mut samples, 0.5), percentile(&mut samples, 0.9));
            println!(
                "exec round trip (Exec RPC + SPDY session of `echo hi`), {runs} runs: p50 {p50:.2} ms, p90 {p90:.2} ms"
            );
        }
    }

    // Port-forward: wait until httpd serves the file, then time full downloads.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match download(&mut client, &pod, Transport::Spdy).await {
            Ok((bytes, _)) if bytes == BIG => break,
            other => {
                assert!(Instant::now() < deadline, "the pod's httpd never served the file: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for (name, transport) in [("SPDY", Transport::Spdy), ("WebSocket (SPDY tunnel)", Transport::WebSocket)] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (bytes, elapsed) = download(&mut client, &pod, transport).await.expect("download");
            assert_eq!(bytes, BIG, "the whole file came through");
            rates.push(bytes as f64 / 1e6 / elapsed.as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "port-forward {name}: 100 MB download, median of 3: {:.0} MB/s (runs: {})",
            rates[1],
            rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
        );
    }

    let _ = client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
    let _ = client.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await;
}
