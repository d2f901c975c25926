//! Pulling over TLS from a registry with a self-signed CA and htpasswd (basic) authentication: the
//! per-registry CA file, credentials from the request and from the config, refusals with the right codes,
//! and no credential in the daemon's log.

use std::path::Path;
use std::process::Command;

use berth::cri::v1::{AuthConfig, ImageSpec, PullImageRequest};
use tonic::Code;

use crate::support::registry::{KillOnDrop, TestRegistry, start_custom_registry};
use crate::support::tls::{make_server_certificate, run};
use crate::support::{Daemon, DaemonDirs, require_tool};

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pa55word";

/// A CA and a server certificate for 127.0.0.1 signed by it ([`make_server_certificate`]), and an htpasswd
/// file, in `dir`.
fn make_credentials(dir: &Path) {
    make_server_certificate(dir);
    require_tool("htpasswd");
    let output = Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]).output().unwrap();
    assert!(output.status.success());
    std::fs::write(dir.join("htpasswd"), output.stdout).unwrap();
}

/// docker-registry with TLS and htpasswd on a free loopback port.
fn start_tls_registry(dir: &Path) -> (String, KillOnDrop) {
    let d = dir.display();
    start_custom_registry(
        dir,
        &format!("  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n"),
        &format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {d}/htpasswd\n"),
    )
}

fn pull_request(image: &str, auth: Option<AuthConfig>) -> PullImageRequest {
    PullImageRequest {
        image: Some(ImageSpec { image: image.to_owned(), ..Default::default() }),
        auth,
        sandbox_config: None,
    }
}

#[tokio::test]
async fn tls_registry_with_a_private_ca_and_basic_auth() {
    let plain = TestRegistry::get();
    let busybox = plain.image("busybox");
    let temp = tempfile::Builder::new().prefix("berth-tls.").tempdir().unwrap();
    make_credentials(temp.path());
    let (address, _registry) = start_tls_registry(temp.path());
    let certs = temp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(temp.path().join("ca.crt"), certs.join("ca.crt")).unwrap();
    let image = format!("{address}/{}:latest", busybox.repository);
    require_tool("skopeo");
    run(Command::new("skopeo").args(["copy", "-q", "--src-tls-verify=false", "--dest-cert-dir"]).arg(&certs).args([
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("docker://{}", busybox.reference),
        &format!("docker://{image}"),
    ]));

    let ca = temp.path().join("ca.crt");
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{address}\"]\nca_file = {ca:?}\n"));
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;

    let err = client.image.pull_image(pull_request(&image, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("401 Unauthorized: credentials are needed"), "{}", err.message());
    let wrong = AuthConfig { username: USER.into(), password: "wrong".into(), ..Default::default() };
    let err = client.image.pull_image(pull_request(&image, Some(wrong))).await.unwrap_err();
    assert!(err.message().contains("the credentials were refused"), "{}", err.message());
    let right = AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
    let pulled = client.image.pull_image(pull_request(&image, Some(right))).await.expect("pull with credentials");
    assert_eq!(pulled.into_inner().image_ref, busybox.config_digest);

    // Credentials from the config, for pulls that carry none; without the CA the certificate is refused.
    let config_dirs = DaemonDirs::new();
    config_dirs.write_config(&format!(
        "[registries.\"{address}\"]\nca_file = {ca:?}\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    ));
    let config_daemon = Daemon::start_in(&config_dirs);
    let mut config_client = config_daemon.client().await;
    config_client.image.pull_image(pull_request(&image, None)).await.expect("pull with configured credentials");

    let (_no_ca_dirs, no_ca_daemon) = Daemon::start();
    let mut no_ca = no_ca_daemon.client().await;
    let err = no_ca.image.pull_image(pull_request(&image, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("RegistryUnavailable: "), "{}", err.message());

    for log in [daemon.log_text(), config_daemon.log_text()] {
        assert!(!log.contains(PASSWORD), "a password reached the log:\n{log}");
    }
}
