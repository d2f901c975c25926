//! The streaming server through the daemon: PortForward returns a one-shot URL, and berth's WebSocket client
//! (`v4.channel.k8s.io` with the port in the query) reaches the web test image's port 80 inside the pod's own
//! network namespace, which the host cannot reach otherwise. `streaming_cli.rs` covers SPDY and the CLI.

use std::time::Duration;

use berth::cri::v1::*;
use berth_streaming::client::websocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support::cri::{container_config, pull, run_container, run_pod, stop_and_remove_pod};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

#[tokio::test]
async fn port_forward_reaches_a_port_inside_the_pod_over_websocket() {
    let registry = TestRegistry::get();
    let web = &registry.image("web").reference;
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    // The pod's own network namespace with only loopback: port 80 in it is unreachable from the host.
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    std::fs::write(
        dirs.cni_conf_dir().join("10-lo.conflist"),
        r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    pull(&mut client, web).await;
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "fwd".into(),
            uid: "uid-fwd".into(),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: "fwd".into(),
        log_directory: dirs.path().join("logs").display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod = run_pod(&mut client, &pod_config).await;
    // The image's own command: httpd on port 80.
    run_container(&mut client, &pod, &pod_config, container_config("web", web, &[])).await;

    let err = client
        .runtime
        .port_forward(PortForwardRequest { pod_sandbox_id: "0000".into(), port: vec![80] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let url = client
        .runtime
        .port_forward(PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![80] })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let body =
        tokio::time::timeout(Duration::from_secs(20), fetch_through(&url, 80)).await.expect("the forward answers");
    assert!(body.starts_with("HTTP/1.") && body.contains("200") && body.contains("berth-test-web"), "{body}");

    // The URL was single-use.
    let again = websocket::connect(&format!("{url}?port=80"), &[websocket::PORT_FORWARD_PROTOCOL]).await;
    assert!(again.is_err(), "a used token was accepted again");

    stop_and_remove_pod(&mut client, &pod).await;
}

/// Opens the forward (WebSocket, port in the query), sends an HTTP request through it and returns what
/// comes back until the pod's server closes.
async fn fetch_through(url: &str, port: u16) -> String {
    // `forwarded` stands for an accepted local connection; `app` is the program behind it.
    let (forwarded, mut app) = tokio::io::duplex(64 * 1024);
    let request = async {
        app.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut body = Vec::new();
        app.read_to_end(&mut body).await.unwrap();
        body
    };
    let (forwarded, body) = tokio::join!(websocket::forward_port(url, port, forwarded), request);
    forwarded.expect("the forward ends cleanly");
    String::from_utf8_lossy(&body).into_owned()
}
