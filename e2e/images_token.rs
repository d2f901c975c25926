//! Pulling from a registry that uses the distribution spec's token authentication (what Docker Hub,
//! registry.k8s.io and most cloud registries do, anonymous pulls included): Debian's docker-registry
//! configured with `auth: token`, and a token service in this test that signs real JWTs (RS256, the
//! certificate in `x5c`) which the registry verifies against its root bundle.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth::cri::v1::{AuthConfig, ImageSpec, PullImageRequest};
use tonic::Code;

use crate::support::registry::{KillOnDrop, TestRegistry, start_custom_registry};
use crate::support::{DaemonDirs, require_tool};

const USER: &str = "tokenuser";
const PASSWORD: &str = "t0ken-pa55";
/// Anyone may pull this repository (like a public Docker Hub image); the other needs credentials.
const PUBLIC: &str = "berth-test/busybox";
const PRIVATE: &str = "berth-test/private";

struct TokenService {
    realm: String,
    requests: Arc<AtomicUsize>,
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Starts the token service on a free loopback port; it signs with `dir/token.key`.
fn start_token_service(dir: &Path) -> TokenService {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = answer(stream, &dir);
        }
    });
    TokenService { realm, requests }
}

fn answer(mut stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let scope = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("scope="))
        .map(|s| s.replace("%3A", ":").replace("%2F", "/").replace("%2C", ","))
        .unwrap_or_default();
    let expected = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let (subject, authenticated) = match &authorization {
        Some(value) if *value == expected => (USER, true),
        Some(_) => return respond(&mut stream, "401 Unauthorized", "{\"details\":\"bad credentials\"}"),
        None => ("", false),
    };
    // scope = repository:<name>:<actions>
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let granted: Vec<&str> = actions.split(',').filter(|a| authenticated || (name == PUBLIC && *a == "pull")).collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": "berth-test-issuer", "sub": subject, "aud": "berth-test",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", std::process::id()),
        "access": [{"type": kind, "name": name, "actions": granted}],
    });
    let certificate = std::fs::read_to_string(dir.join("token.crt")).unwrap();
    let der: String = certificate.lines().filter(|l| !l.starts_with("-----")).collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der]});
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-sign"])
        .arg(dir.join("token.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    openssl.stdin.take().unwrap().write_all(signing_input.as_bytes())?;
    let signature = openssl.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
    respond(&mut stream, "200 OK", &serde_json::json!({"token": token, "expires_in": 300}).to_string())
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// docker-registry on plain HTTP with token authentication against `realm`.
fn start_token_registry(dir: &Path, realm: &str) -> (String, KillOnDrop) {
    let d = dir.display();
    start_custom_registry(
        dir,
        "  secret: berth-test-secret\n",
        &format!(
            "auth:\n  token:\n    realm: {realm}\n    service: berth-test\n    issuer: berth-test-issuer\n    rootcertbundle: {d}/token.crt\n"
        ),
    )
}

fn pull_request(image: &str, auth: Option<AuthConfig>) -> PullImageRequest {
    PullImageRequest {
        image: Some(ImageSpec { image: image.to_owned(), ..Default::default() }),
        auth,
        sandbox_config: None,
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
}

#[tokio::test]
async fn bearer_tokens_anonymous_and_with_credentials_are_fetched_cached_and_honoured() {
    require_tool("openssl");
    require_tool("skopeo");
    let plain = TestRegistry::get();
    let busybox = plain.image("busybox");
    let temp = tempfile::Builder::new().prefix("berth-token.").tempdir().unwrap();
    run(Command::new("openssl").current_dir(temp.path()).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "token.key",
        "-out",
        "token.crt",
        "-days",
        "2",
        "-subj",
        "/CN=berth test token issuer",
    ]));
    let tokens = start_token_service(temp.path());
    let (address, _registry) = start_token_registry(temp.path(), &tokens.realm);
    for repository in [PUBLIC, PRIVATE] {
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds"])
            .args([
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{}", busybox.reference),
                &format!("docker://{address}/{repository}:latest"),
            ]));
    }

    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{address}\"]\ninsecure = true\n"));
    let daemon = crate::support::Daemon::start_in(&dirs);
    let mut client = daemon.client().await;

    // Anonymous: the token service grants pull on the public repository only.
    let before = tokens.requests.load(Ordering::SeqCst);
    let public = format!("{address}/{PUBLIC}:latest");
    let pulled = client
        .image
        .pull_image(pull_request(&public, None))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", log_of(temp.path())));
    assert_eq!(pulled.into_inner().image_ref, busybox.config_digest);
    let for_first_pull = tokens.requests.load(Ordering::SeqCst) - before;
    assert!(for_first_pull >= 1, "no token was fetched");
    // The token is cached per scope: pulling again asks the service for nothing.
    client.image.pull_image(pull_request(&public, None)).await.unwrap();
    assert_eq!(tokens.requests.load(Ordering::SeqCst) - before, for_first_pull, "token not reused");

    let private = format!("{address}/{PRIVATE}:latest");
    let err = client.image.pull_image(pull_request(&private, None)).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(
        err.message().contains("401") || err.message().contains("denied") || err.message().contains("credentials"),
        "{}",
        err.message()
    );
    let wrong = AuthConfig { username: USER.into(), password: "nope".into(), ..Default::default() };
    let err = client.image.pull_image(pull_request(&private, Some(wrong))).await.unwrap_err();
    assert!(err.message().contains("the credentials were refused"), "{}", err.message());
    let right = AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
    let pulled = client.image.pull_image(pull_request(&private, Some(right))).await.expect("pull with credentials");
    assert_eq!(pulled.into_inner().image_ref, busybox.config_digest);
    assert!(!daemon.log_text().contains(PASSWORD), "a password reached the log");
}
