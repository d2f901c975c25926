//! An independent client: the k8s-cri crate, generated from an older CRI release by other people with an
//! older tonic. If it can talk to berth, older kubelets can too (the wire format, not our own generated
//! code, is what is being checked).

use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use crate::support::Daemon;

#[tokio::test]
async fn an_older_cri_client_gets_the_same_answers() {
    let (_dirs, daemon) = Daemon::start();
    let path = daemon.socket.clone();
    let channel = k8s_cri_tonic::transport::Endpoint::from_static("http://berth.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower_k8s_cri::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect with the k8s-cri client");
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let version = runtime.version(k8s_cri::v1::VersionRequest { version: "0.1.0".into() }).await.unwrap().into_inner();
    assert_eq!((version.runtime_name.as_str(), version.runtime_api_version.as_str()), ("berth", "v1"));

    let status = runtime.status(k8s_cri::v1::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let types: Vec<String> = status.status.unwrap().conditions.into_iter().map(|c| c.r#type).collect();
    assert_eq!(types, ["RuntimeReady", "NetworkReady"]);
    assert!(status.info.contains_key("config"));

    let mut images = ImageServiceClient::new(channel);
    let fs = images.image_fs_info(k8s_cri::v1::ImageFsInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(fs.image_filesystems.len(), 1);
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
}

/// A decoded HTTP/2 header block: names and values.
type HeaderBlock = Vec<(Vec<u8>, Vec<u8>)>;

/// One gRPC call spoken in HTTP/2 by hand on a fresh connection to `socket`, exactly as given: `headers` after
/// the pseudo-headers, `message` the encoded request. Returns the server's header blocks (decoded) and the
/// payload of its DATA frames, once it ended the stream. Fails on a RST_STREAM.
fn call_by_hand(
    socket: &std::path::Path,
    authority: &str,
    path: &str,
    headers: &[(&[u8], &[u8])],
    message: &[u8],
) -> (Vec<HeaderBlock>, Vec<u8>) {
    use std::io::{Read, Write};

    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = |kind: u8, flags: u8, id: u32, payload: &[u8]| {
        let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        bytes.extend_from_slice(&[kind, flags]);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    };
    let mut all: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    all.extend_from_slice(headers);
    let block = fluke_hpack::Encoder::new().encode(all);
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    request.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    request.extend(frame(0x0, 0x1, 1, &body)); // DATA, END_STREAM
    stream.write_all(&request).unwrap();

    let mut decoder = fluke_hpack::Decoder::new();
    let (mut blocks, mut data) = (Vec::new(), Vec::new());
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read the daemon's answer");
        assert!(n > 0, "connection closed before the stream ended");
        received.extend_from_slice(&chunk[..n]);
        let mut ended = false;
        let mut used = 0;
        while received.len() - used >= 9 {
            let rest = &received[used..];
            let length = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            if rest.len() < 9 + length {
                break;
            }
            let (kind, flags) = (rest[3], rest[4]);
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + length];
            assert!(!(kind == 0x3 && id == 1), "the daemon reset the stream (RST_STREAM)");
            if kind == 0x1 && id == 1 {
                // h2 sends neither padding nor priority on responses.
                blocks.push(decoder.decode(payload).expect("decode the daemon's header block"));
            } else if kind == 0x0 && id == 1 {
                data.extend_from_slice(payload);
            }
            ended |= id == 1 && flags & 0x1 != 0 && (kind == 0x0 || kind == 0x1);
            used += 9 + length;
        }
        received.drain(..used);
        if ended {
            return (blocks, data);
        }
    }
}

/// Regression: grpc-go clients that dial a plain socket path (kubelet and crictl before Kubernetes 1.31) send
/// that path as the HTTP/2 `:authority`. h2 used to reset every such stream with PROTOCOL_ERROR, so those
/// kubelets could not use berth at all. This speaks HTTP/2 by hand to send exactly what they send.
#[test]
fn an_old_go_client_sending_the_socket_path_as_authority_is_served() {
    let (_dirs, daemon) = Daemon::start();
    let socket_path = daemon.socket.display().to_string();
    let (_, answer) = call_by_hand(&daemon.socket, &socket_path, "/runtime.v1.RuntimeService/Version", &[], &[]);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("berth") && text.contains("v1"), "unexpected answer {text:?}");
}

/// A caller's deadline that passes is answered DeadlineExceeded, as grpc-go servers (containerd, CRI-O)
/// answer it and critest expects; tonic's own enforcement answers Cancelled. By hand, so no client-side
/// timer answers first: the code is the daemon's.
#[tokio::test]
async fn a_passed_deadline_is_answered_deadline_exceeded_and_the_work_still_finishes() {
    use berth::cri::v1::*;
    use prost::Message;

    let (dirs, daemon) = Daemon::start();
    let config =
        crate::support::cri::pod_config("late", &dirs.path().join("logs"), crate::support::cri::node_network());
    let request = RunPodSandboxRequest { config: Some(config), ..Default::default() };
    let socket = daemon.socket.clone();
    let (blocks, _) = tokio::task::spawn_blocking(move || {
        call_by_hand(
            &socket,
            "localhost",
            "/runtime.v1.RuntimeService/RunPodSandbox",
            &[(b"grpc-timeout", b"1m")],
            &request.encode_to_vec(),
        )
    })
    .await
    .unwrap();
    let status = blocks.iter().flatten().find(|(name, _)| name == b"grpc-status").map(|(_, v)| v.clone());
    assert_eq!(status.as_deref(), Some(&b"4"[..]), "not DeadlineExceeded (4): {blocks:?}");

    // The sandbox is made anyway (kubelet's retry finds it); then it is removed.
    let mut client = daemon.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pod = loop {
        let pods = client.runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner();
        if let Some(pod) = pods.items.into_iter().find(|p| p.state == PodSandboxState::SandboxReady as i32) {
            break pod.id;
        }
        assert!(std::time::Instant::now() < deadline, "the late RunPodSandbox never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    crate::support::cri::stop_and_remove_pod(&mut client, &pod).await;
}
