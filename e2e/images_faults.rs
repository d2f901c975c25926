//! A registry connection dying mid-blob, through a loopback proxy in front of the real registry: a cut
//! connection is resumed with a Range request and the pull succeeds; a registry that stays gone fails the
//! pull with `RegistryUnavailable`, leaves nothing, and a retry succeeds once it is back. A layer whose bytes
//! change on the way (still a valid gzip stream with the same content, so only its digest tells) fails the
//! pull, leaves nothing, and the retry succeeds.

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
/// off (both sockets shut down) and `cut` is cleared; while `dead` is set, every connection is closed; while
/// `corrupt` is above zero, it is decremented for each gzip blob response, whose gzip header's modification
/// time is changed on the way (a valid stream with the same content, and another digest).
#[derive(Clone)]
struct Proxy {
    cut: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    corrupt: Arc<AtomicU64>,
    address: String,
}

/// One connection's requests as the response side needs them: whether the last one was a whole blob GET,
/// and how many requests it has seen (each response answers the last request; clients do not pipeline).
#[derive(Default)]
struct Requests {
    blob: AtomicBool,
    count: AtomicU64,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            cut: Arc::new(AtomicBool::new(false)),
            dead: Arc::new(AtomicBool::new(false)),
            cuts: Arc::new(AtomicU64::new(0)),
            corrupt: Arc::new(AtomicU64::new(0)),
            address: listener.local_addr().unwrap().to_string(),
        };
        let shared = proxy.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if shared.dead.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let requests = Arc::new(Requests::default());
                let (client_read, server_write, seen) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap(), requests.clone());
                std::thread::spawn(move || forward_requests(client_read, server_write, &seen));
                let proxy = shared.clone();
                std::thread::spawn(move || forward_responses(server, client, &requests, &proxy));
            }
        });
        proxy
    }
}

/// A daemon that pulls `image` of the test registry through a new [`Proxy`]: the proxy, the image's
/// reference through it, the daemon's directories and the daemon.
fn behind_proxy(image: &str) -> (Proxy, String, DaemonDirs, Daemon) {
    let registry = TestRegistry::get();
    let proxy = Proxy::start(registry.address.clone());
    let reference = registry.image(image).reference.replacen(&registry.address, &proxy.address, 1);
    let dirs = DaemonDirs::new();
    dirs.write_config(&insecure(&proxy.address));
    let daemon = Daemon::start_in(&dirs);
    (proxy, reference, dirs, daemon)
}

fn forward_requests(mut from: TcpStream, mut to: TcpStream, requests: &Requests) {
    let mut buffer = [0u8; 16384];
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
        if text.starts_with("get ") || text.starts_with("head ") {
            let blob = text.starts_with("get ") && text.contains("/blobs/sha256:") && !text.contains("\r\nrange:");
            requests.blob.store(blob, Ordering::SeqCst);
            requests.count.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn forward_responses(mut from: TcpStream, mut to: TcpStream, requests: &Requests, proxy: &Proxy) {
    let mut buffer = [0u8; 65536];
    let mut sent = 0usize;
    // The response being held back until its head and the first bytes of its body are in, to corrupt them.
    let mut held: Vec<u8> = Vec::new();
    let mut inspected = 0;
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 || proxy.dead.load(Ordering::SeqCst) {
            break;
        }
        let mut out = &buffer[..n];
        let request = requests.count.load(Ordering::SeqCst);
        if request != inspected && requests.blob.load(Ordering::SeqCst) && proxy.corrupt.load(Ordering::SeqCst) > 0 {
            held.extend_from_slice(out);
            let Some(head) = held.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4) else { continue };
            // Every layer and config this test pulls is longer than 10 bytes.
            let whole_blob = held.starts_with(b"HTTP/1.1 200");
            if whole_blob && held.len() < head + 10 {
                continue;
            }
            inspected = request;
            if whole_blob && held[head..head + 3] == [0x1f, 0x8b, 0x08] {
                // Bytes 4..8 of a gzip member are its MTIME, which decompressors ignore.
                held[head + 4] ^= 0xff;
                proxy.corrupt.fetch_sub(1, Ordering::SeqCst);
            }
            out = &held[..];
        }
        if to.write_all(out).is_err() {
            break;
        }
        sent += out.len();
        held.clear();
        if requests.blob.load(Ordering::SeqCst) && sent > (1 << 20) && proxy.cut.swap(false, Ordering::SeqCst) {
            proxy.cuts.fetch_add(1, Ordering::SeqCst);
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
    let (proxy, image, dirs, daemon) = behind_proxy("big");
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

#[tokio::test]
async fn a_blob_changed_on_the_way_fails_the_pull_cleanly_and_the_retry_succeeds() {
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox");
    let (proxy, image, dirs, daemon) = behind_proxy("busybox");
    let mut client = daemon.client().await;

    proxy.corrupt.store(1, Ordering::SeqCst);
    let err = pull(&mut client, &image).await.expect_err("a layer whose digest is not the manifest's");
    assert_eq!(proxy.corrupt.load(Ordering::SeqCst), 0, "the proxy changed no layer");
    // Unavailable: a blob changed in transit may come right on the next try.
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("the registry sent content with digest"), "{}", err.message());
    assert_store_empty(&dirs);

    assert_eq!(pull(&mut client, &image).await.expect("the retry"), busybox.config_digest);
}
