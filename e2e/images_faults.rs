//! A registry connection dying mid-blob, through a loopback proxy in front of the real registry: a cut
//! connection is resumed with a Range request and the pull succeeds; a registry that stays gone fails the
//! pull with `RegistryUnavailable`, leaves nothing, and a retry succeeds once it is back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth::cri::v1::{ImageSpec, PullImageRequest};
use tonic::Code;

use crate::images::{assert_store_empty, insecure};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

/// Forwards `listen` to `upstream`. While `cut` is set, the first blob response that passes 1 MiB is cut
/// off (both sockets shut down) and `cut` is cleared; while `dead` is set, every connection is closed.
struct Proxy {
    cut: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    address: String,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (cut, dead, cuts) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (c, d, n) = (cut.clone(), dead.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let blob = Arc::new(AtomicBool::new(false));
                let (client_read, server_write, b) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap(), blob.clone());
                std::thread::spawn(move || forward_requests(client_read, server_write, b));
                let (c, d, n) = (c.clone(), d.clone(), n.clone());
                std::thread::spawn(move || forward_responses(server, client, blob, c, d, n));
            }
        });
        Proxy { cut, dead, cuts, address }
    }
}

fn forward_requests(mut from: TcpStream, mut to: TcpStream, blob: Arc<AtomicBool>) {
    let mut buffer = [0u8; 16384];
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
        if text.starts_with("get ") {
            blob.store(text.contains("/blobs/sha256:") && !text.contains("\r\nrange:"), Ordering::SeqCst);
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn forward_responses(
    mut from: TcpStream,
    mut to: TcpStream,
    blob: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
) {
    let mut buffer = [0u8; 65536];
    let mut sent = 0usize;
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 || dead.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
        sent += n;
        if blob.load(Ordering::SeqCst) && sent > (1 << 20) && cut.swap(false, Ordering::SeqCst) {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

async fn pull(client: &mut berth::cli::client::Client, image: &str) -> Result<String, tonic::Status> {
    let request = PullImageRequest {
        image: Some(ImageSpec { image: image.to_owned(), ..Default::default() }),
        auth: None,
        sandbox_config: None,
    };
    client.image.pull_image(request).await.map(|r| r.into_inner().image_ref)
}

#[tokio::test]
async fn a_connection_cut_mid_blob_resumes_and_a_dead_registry_fails_cleanly() {
    let registry = TestRegistry::get();
    let big = registry.image("big");
    let proxy = Proxy::start(registry.address.clone());
    let image = big.reference.replacen(&registry.address, &proxy.address, 1);
    let dirs = DaemonDirs::new();
    dirs.write_config(&insecure(&proxy.address));
    let daemon = Daemon::start_in(&dirs);
    let mut client = berth::cli::client::Client::connect(
        berth::cli::client::Endpoint { path: daemon.socket.clone() },
        Duration::from_secs(120),
    )
    .await
    .unwrap();

    proxy.cut.store(true, Ordering::SeqCst);
    assert_eq!(pull(&mut client, &image).await.expect("pull through a cut connection"), big.config_digest);
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the proxy cut one blob download");
    assert!(daemon.log_text().contains("download interrupted; resuming"), "{}", daemon.log_text());
    client
        .image
        .remove_image(berth::cri::v1::RemoveImageRequest {
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
        })
        .await
        .unwrap();

    // The registry goes away mid-pull and stays away.
    proxy.cut.store(true, Ordering::SeqCst);
    let dead = proxy.dead.clone();
    let watcher = proxy.cuts.clone();
    std::thread::spawn(move || {
        while watcher.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        dead.store(true, Ordering::SeqCst);
    });
    let err = pull(&mut client, &image).await.expect_err("pull from a dead registry");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("RegistryUnavailable: "), "{}", err.message());
    assert_store_empty(&dirs);

    // Back again: the retry succeeds.
    proxy.dead.store(false, Ordering::SeqCst);
    assert_eq!(pull(&mut client, &image).await.expect("retry"), big.config_digest);
}
