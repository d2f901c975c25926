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
