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

/// Regression: grpc-go clients that dial a plain socket path (kubelet and crictl before Kubernetes 1.31) send
/// that path as the HTTP/2 `:authority`. h2 used to reset every such stream with PROTOCOL_ERROR, so those
/// kubelets could not use berth at all. This speaks HTTP/2 by hand to send exactly what they send.
#[test]
fn an_old_go_client_sending_the_socket_path_as_authority_is_served() {
    use std::io::{Read, Write};

    let (_dirs, daemon) = Daemon::start();
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = |kind: u8, flags: u8, id: u32, payload: &[u8]| {
        let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        bytes.extend_from_slice(&[kind, flags]);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    };
    let socket_path = daemon.socket.display().to_string();
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/runtime.v1.RuntimeService/Version"),
        (b":authority", socket_path.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    let block = fluke_hpack::Encoder::new().encode(headers);
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    request.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    request.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA: an empty VersionRequest, END_STREAM
    stream.write_all(&request).unwrap();

    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = loop {
        let n = stream.read(&mut chunk).expect("read the daemon's answer");
        assert!(n > 0, "connection closed before an answer");
        received.extend_from_slice(&chunk[..n]);
        let (mut rest, mut found) = (received.as_slice(), None);
        while rest.len() >= 9 {
            let length = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            if rest.len() < 9 + length {
                break;
            }
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            assert!(!(rest[3] == 0x3 && id == 1), "the daemon reset the stream (RST_STREAM)");
            if rest[3] == 0x0 && id == 1 {
                found = Some(rest[9..9 + length].to_vec());
            }
            rest = &rest[9 + length..];
        }
        if let Some(data) = found {
            break data;
        }
    };
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("berth") && text.contains("v1"), "unexpected answer {text:?}");
}
