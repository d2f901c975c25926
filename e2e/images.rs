//! The CRI ImageService end to end: pulls from the real docker-registry on 127.0.0.1 through the daemon's
//! socket, the on-disk result (one copy of a shared layer, nothing left after removal or failure),
//! mirrors, platform selection, failures with kubelet's reason words, restarts and crashes.

use std::path::Path;
use std::time::Duration;

use berth::cli::client::Client;
use berth::cri::v1::{
    ImageFilter, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use berth_image::test_tar::TarBuilder;
use nix::sys::signal::Signal;
use tonic::Code;

use crate::support::oci::{self, Compression, Layer};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_owned(), ..Default::default() })
}

pub fn insecure(address: &str) -> String {
    format!("[registries.\"{address}\"]\ninsecure = true\n")
}

fn start(extra: &str) -> (DaemonDirs, Daemon) {
    let dirs = DaemonDirs::new();
    dirs.write_config(extra);
    let daemon = Daemon::start_in(&dirs);
    (dirs, daemon)
}

pub async fn pull(client: &mut Client, image: &str) -> Result<String, tonic::Status> {
    let request = PullImageRequest { image: spec(image), auth: None, sandbox_config: None };
    client.image.pull_image(request).await.map(|r| r.into_inner().image_ref)
}

async fn list(client: &mut Client) -> Vec<berth::cri::v1::Image> {
    client.image.list_images(ListImagesRequest { filter: None }).await.unwrap().into_inner().images
}

async fn status(client: &mut Client, image: &str) -> Option<berth::cri::v1::Image> {
    client
        .image
        .image_status(ImageStatusRequest { image: spec(image), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn remove(client: &mut Client, image: &str) {
    client.image.remove_image(RemoveImageRequest { image: spec(image) }).await.expect("RemoveImage");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts the image store holds no content and no leftovers.
pub fn assert_store_empty(dirs: &DaemonDirs) {
    let images = dirs.root().join("images");
    for dir in ["blobs/sha256", "snapshots", "ingest", "tmp", "trash"] {
        assert_eq!(entries(&images.join(dir)), Vec::<String>::new(), "{dir} is not empty");
    }
}

#[tokio::test]
async fn pull_list_status_and_remove_by_tag_leave_nothing_behind() {
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox");
    let (dirs, daemon) = start(&insecure(&registry.address));
    let mut client = daemon.client().await;

    let id = pull(&mut client, &busybox.reference).await.expect("pull busybox");
    assert_eq!(id, busybox.config_digest, "the image ID is the config digest");

    let images = list(&mut client).await;
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec![busybox.reference.clone()]);
    let repo_digest = format!("{}/{}@{}", registry.address, busybox.repository, busybox.manifest_digest);
    assert_eq!(image.repo_digests, vec![repo_digest.clone()]);
    assert!(image.size > 500_000 && image.size == busybox.size, "size {} vs {}", image.size, busybox.size);

    // The same image by ID, bare hex ID, tag and digest; an unknown one is an empty answer, not an error.
    for name in [id.as_str(), id.trim_start_matches("sha256:"), busybox.reference.as_str(), repo_digest.as_str()] {
        assert_eq!(status(&mut client, name).await.map(|i| i.id), Some(id.clone()), "{name}");
    }
    assert!(status(&mut client, "127.0.0.1:1/nothing:here").await.is_none());
    let verbose =
        client.image.image_status(ImageStatusRequest { image: spec(&id), verbose: true }).await.unwrap().into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(info["imageSpec"]["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);

    let filtered = client
        .image
        .list_images(ListImagesRequest { filter: Some(ImageFilter { image: spec(&busybox.reference) }) })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = client
        .image
        .list_images(ListImagesRequest { filter: Some(ImageFilter { image: spec("nothing:here") }) })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(none.is_empty());

    // The unpacked layer is on disk with the image's content.
    let snapshots = entries(&dirs.root().join("images/snapshots"));
    assert_eq!(snapshots.len(), 1);
    let layer = dirs.root().join("images/snapshots").join(&snapshots[0]);
    assert!(layer.join("bin/busybox").is_file());
    assert_eq!(std::fs::read_link(layer.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));

    // Concurrent removals of one image (by tag and by ID) all succeed, and the content goes with it.
    let (mut a, mut b) = (client.clone(), client.clone());
    let (tag, id_ref) = (busybox.reference.clone(), id.clone());
    let first = tokio::spawn(async move { a.image.remove_image(RemoveImageRequest { image: spec(&tag) }).await });
    let second = tokio::spawn(async move { b.image.remove_image(RemoveImageRequest { image: spec(&id_ref) }).await });
    first.await.unwrap().expect("first removal");
    second.await.unwrap().expect("second removal");
    assert!(list(&mut client).await.is_empty());
    assert_store_empty(&dirs);
    remove(&mut client, &busybox.reference).await; // removing a missing image succeeds

    // Pulling again works after removal.
    assert_eq!(pull(&mut client, &busybox.reference).await.unwrap(), id);
}

#[tokio::test]
async fn a_layer_shared_by_two_images_is_stored_once() {
    let registry = TestRegistry::get();
    let (busybox, web) = (registry.image("busybox"), registry.image("web"));
    let (dirs, daemon) = start(&insecure(&registry.address));
    let mut client = daemon.client().await;
    let (mut other, web_ref) = (client.clone(), web.reference.clone());
    // Pulled at the same time: the shared layer is downloaded and unpacked once.
    let web_pull = tokio::spawn(async move { pull(&mut other, &web_ref).await });
    pull(&mut client, &busybox.reference).await.expect("pull busybox");
    web_pull.await.unwrap().expect("pull web");

    let snapshots_dir = dirs.root().join("images/snapshots");
    let snapshots = entries(&snapshots_dir);
    assert_eq!(snapshots.len(), 2, "busybox layer shared, plus web's own layer: {snapshots:?}");
    let busybox_files: Vec<_> =
        snapshots.iter().filter(|s| snapshots_dir.join(s).join("bin/busybox").exists()).collect();
    assert_eq!(busybox_files.len(), 1, "one copy of the shared layer");
    assert_eq!(entries(&dirs.root().join("images/blobs/sha256")).len(), 2 * 2 + 2, "2 manifests, 2 configs, 2 layers");

    // Removing busybox keeps the layer web still uses.
    remove(&mut client, &busybox.reference).await;
    assert_eq!(entries(&snapshots_dir).len(), 2);
    assert!(status(&mut client, &web.reference).await.is_some());
    remove(&mut client, &web.reference).await;
    assert_store_empty(&dirs);
}

#[tokio::test]
async fn a_mirror_serves_an_image_listed_under_its_original_name() {
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox");
    // registry.example does not exist: only the loopback mirror can serve it (an air-gapped node).
    let config = format!("[registries.\"registry.example\"]\nmirrors = [\"http://{}\"]\n", registry.address);
    let (_dirs, daemon) = start(&config);
    let mut client = daemon.client().await;
    let name = format!("registry.example/{}:latest", busybox.repository);
    let id = pull(&mut client, &name).await.expect("pull through the mirror");
    assert_eq!(id, busybox.config_digest);
    let image = status(&mut client, &name).await.expect("listed under the original name");
    assert_eq!(image.repo_tags, vec![name.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!("registry.example/{}@{}", busybox.repository, busybox.manifest_digest)]
    );
    assert!(status(&mut client, &busybox.reference).await.is_none(), "not listed under the mirror's name");
}

#[tokio::test]
async fn a_dead_mirror_falls_back_to_the_registry() {
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox");
    let config = format!("{}mirrors = [\"http://127.0.0.1:1\"]\n", insecure(&registry.address));
    let (_dirs, daemon) = start(&config);
    let mut client = daemon.client().await;
    assert_eq!(pull(&mut client, &busybox.reference).await.expect("fallback to origin"), busybox.config_digest);
}

#[tokio::test]
async fn the_host_platform_is_pulled_from_a_multi_arch_index() {
    let registry = TestRegistry::get();
    let mut host_layer = TarBuilder::new();
    host_layer.file("platform", b"host\n", 0o644);
    let mut other_layer = TarBuilder::new();
    other_layer.file("platform", b"other\n", 0o644);
    let repository = "berth-test/multiarch";
    let host = oci::push_image(
        &registry.address,
        repository,
        "host",
        &[Layer::gzip(host_layer.finish())],
        oci::host_architecture(),
        "",
    );
    let other_arch = if oci::host_architecture() == "s390x" { "riscv64" } else { "s390x" };
    let other =
        oci::push_image(&registry.address, repository, "other", &[Layer::gzip(other_layer.finish())], other_arch, "");
    let index = oci::push_index(
        &registry.address,
        repository,
        "latest",
        &[(&other, other_arch, None), (&host, oci::host_architecture(), None)],
    );
    let only_other = oci::push_index(&registry.address, repository, "foreign", &[(&other, other_arch, None)]);

    let (dirs, daemon) = start(&insecure(&registry.address));
    let mut client = daemon.client().await;
    let name = format!("{}/{repository}:latest", registry.address);
    assert_eq!(pull(&mut client, &name).await.unwrap(), host.config_digest.to_string());
    let image = status(&mut client, &name).await.unwrap();
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/{repository}@{index}", registry.address)],
        "the tag's digest (the index)"
    );
    let snapshot = entries(&dirs.root().join("images/snapshots"));
    let content = std::fs::read(dirs.root().join("images/snapshots").join(&snapshot[0]).join("platform")).unwrap();
    assert_eq!(content, b"host\n");

    let err = pull(&mut client, &format!("{}/{repository}:foreign", registry.address)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("no manifest for linux/") && err.message().contains(other_arch),
        "{}",
        err.message()
    );
    let _ = only_other;
}

#[tokio::test]
async fn zstd_and_uncompressed_layers_and_users_are_read() {
    let registry = TestRegistry::get();
    let mut a = TarBuilder::new();
    a.dir("etc", 0o755).file("etc/zstd", b"z", 0o644);
    let mut b = TarBuilder::new();
    b.file("etc/plain", b"p", 0o600);
    let layers = [
        Layer { compression: Compression::Zstd, ..Layer::gzip(a.finish()) },
        Layer { compression: Compression::Plain, ..Layer::gzip(b.finish()) },
    ];
    let pushed =
        oci::push_image(&registry.address, "berth-test/formats", "v1", &layers, oci::host_architecture(), "1000:1000");
    let named = oci::push_image(
        &registry.address,
        "berth-test/formats",
        "named",
        &layers[..1],
        oci::host_architecture(),
        "nobody",
    );
    let (_dirs, daemon) = start(&insecure(&registry.address));
    let mut client = daemon.client().await;
    assert_eq!(pull(&mut client, &pushed.reference).await.unwrap(), pushed.config_digest.to_string());
    let image = status(&mut client, &pushed.reference).await.unwrap();
    assert_eq!((image.uid.map(|u| u.value), image.username.as_str()), (Some(1000), ""));
    pull(&mut client, &named.reference).await.unwrap();
    let image = status(&mut client, &named.reference).await.unwrap();
    assert_eq!((image.uid, image.username.as_str()), (None, "nobody"));
}

/// Regression: layers unpack separately and in parallel, so a hard link to a file of a lower layer (some
/// image builders write these when a file is added under a second name in a later step) used to fail the
/// pull with "find its hard link target in this layer". Overlayfs would copy the target up; berth copies it.
#[tokio::test]
async fn a_hard_link_to_a_lower_layers_file_is_completed() {
    let registry = TestRegistry::get();
    let mut base = TarBuilder::new();
    base.dir("bin", 0o755).file("bin/tool", b"the tool", 0o4755);
    let mut upper = TarBuilder::new();
    upper.dir("usr", 0o755).hardlink("usr/tool", "bin/tool");
    let pushed = oci::push_image(
        &registry.address,
        "berth-test/crosslink",
        "v1",
        &[Layer::gzip(base.finish()), Layer::gzip(upper.finish())],
        oci::host_architecture(),
        "",
    );
    let (dirs, daemon) = start(&insecure(&registry.address));
    let mut client = daemon.client().await;
    assert_eq!(
        pull(&mut client, &pushed.reference).await.expect("pull with a cross-layer hard link"),
        pushed.config_digest.to_string()
    );
    let snapshots = dirs.root().join("images/snapshots");
    let copies: Vec<_> =
        entries(&snapshots).into_iter().map(|s| snapshots.join(s).join("usr/tool")).filter(|p| p.exists()).collect();
    let [copy] = copies.as_slice() else { panic!("exactly one snapshot holds usr/tool: {copies:?}") };
    assert_eq!(std::fs::read(copy).unwrap(), b"the tool");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(copy).unwrap().permissions().mode() & 0o7777, 0o4755);
}

#[tokio::test]
async fn berth_pull_reports_every_layer_then_the_image() {
    let registry = TestRegistry::get();
    let big = registry.image("big").clone();
    let (_dirs, daemon) = start(&insecure(&registry.address));
    let pull_cli = || {
        let output = crate::support::output_via_files(
            std::process::Command::new(crate::support::berth_bin())
                .args(["pull", &big.reference])
                .env("CONTAINER_RUNTIME_ENDPOINT", format!("unix://{}", daemon.socket.display())),
        );
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        (output.status, text(output.stdout), text(output.stderr))
    };
    let (status, stdout, stderr) = pull_cli();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&format!("Image is up to date for {}", big.config_digest)), "{stdout}");
    let done = stderr.lines().filter(|l| l.contains(": done, ")).count();
    assert_eq!(done, 5, "one line per finished layer of the five:\n{stderr}");
    let (status, _, stderr) = pull_cli();
    assert!(status.success());
    assert_eq!(stderr.lines().filter(|l| l.ends_with(": already present")).count(), 5, "{stderr}");
}

/// Pushes an image whose one layer is `tar` and expects its pull to be refused naming `entry`.
async fn assert_layer_refused(client: &mut Client, registry: &TestRegistry, tag: &str, tar: Vec<u8>, entry: &str) {
    let pushed =
        oci::push_image(&registry.address, "berth-test/evil", tag, &[Layer::gzip(tar)], oci::host_architecture(), "");
    let err = pull(client, &pushed.reference).await.expect_err("malicious layer pulled");
    assert_eq!(err.code(), Code::InvalidArgument, "{tag}: {err:?}");
    assert!(err.message().starts_with("ErrImagePull: "), "{tag}: {}", err.message());
    assert!(
        err.message().contains(entry) && err.message().contains("outside the snapshot"),
        "{tag}: {}",
        err.message()
    );
}

#[tokio::test]
async fn malicious_layers_are_refused_and_leave_nothing() {
    let registry = TestRegistry::get();
    let (dirs, daemon) = start(&insecure(&registry.address));
    let mut client = daemon.client().await;
    // A directory outside the store that the layers aim at; it must stay empty.
    let target = dirs.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let outside = target.to_str().unwrap();
    let depth = "../".repeat(40);

    let mut t = TarBuilder::new();
    t.file("ok", b"", 0o644).file(&format!("{depth}{}/traversal", outside.trim_start_matches('/')), b"x", 0o644);
    assert_layer_refused(&mut client, &registry, "traversal", t.finish(), "traversal").await;
    let mut t = TarBuilder::new();
    t.symlink("escape", outside).file("escape/planted", b"x", 0o644);
    assert_layer_refused(&mut client, &registry, "symlink", t.finish(), "escape/planted").await;
    let mut t = TarBuilder::new();
    t.symlink("escape", outside).hardlink("hardlink", "escape/victim");
    assert_layer_refused(&mut client, &registry, "hardlink", t.finish(), "hardlink").await;
    let mut t = TarBuilder::new();
    t.hardlink("hardlink", &format!("{depth}etc/passwd"));
    assert_layer_refused(&mut client, &registry, "hardlink-dotdot", t.finish(), "hardlink").await;
    let mut t = TarBuilder::new();
    t.file("a/../../.wh.target", b"", 0o644);
    assert_layer_refused(&mut client, &registry, "whiteout", t.finish(), ".wh.target").await;

    assert_eq!(entries(&target), Vec::<String>::new(), "a layer wrote outside its snapshot");
    assert!(list(&mut client).await.is_empty());
    assert_store_empty(&dirs);
}

#[tokio::test]
async fn failures_carry_kubelet_reasons_and_codes_and_leave_nothing() {
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox");
    let config = format!("{}[registries.\"127.0.0.1:1\"]\ninsecure = true\n", insecure(&registry.address));
    let (dirs, daemon) = start(&config);
    let mut client = daemon.client().await;

    let err = pull(&mut client, "127.0.0.1:1/berth-test/busybox:latest").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("RegistryUnavailable: "), "{}", err.message());
    assert!(err.message().contains("cannot reach http://127.0.0.1:1/v2/"), "{}", err.message());

    let err = pull(&mut client, &format!("{}/{}:no-such-tag", registry.address, busybox.repository)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().starts_with("ErrImagePull: "), "{}", err.message());

    let err = pull(&mut client, "Not A Reference").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("InvalidImageName: "), "{}", err.message());

    // Without `insecure`, a registry is only spoken to over TLS (this one speaks plain HTTP).
    let (_plain_dirs, plain_daemon) = start("");
    let mut plain_client = plain_daemon.client().await;
    let err = pull(&mut plain_client, &busybox.reference).await.unwrap_err();
    assert!(err.message().contains(&format!("https://{}/v2/", registry.address)), "{}", err.message());

    // The registry sends fewer bytes than the manifest promises (a truncated blob), or a layer whose
    // content is not what the config says.
    let mut t = TarBuilder::new();
    t.file("f", b"data", 0o644);
    let truncated = Layer { size_override: Some(100_000), ..Layer::gzip(t.finish()) };
    let pushed = oci::push_image(
        &registry.address,
        "berth-test/broken",
        "truncated",
        &[truncated],
        oci::host_architecture(),
        "",
    );
    let err = pull(&mut client, &pushed.reference).await.unwrap_err();
    assert!(err.message().contains("the manifest says 100000"), "{}", err.message());
    let wrong = Layer { diff_id_override: Some(berth_image::Digest::of(b"other")), ..Layer::gzip(t.finish()) };
    let pushed =
        oci::push_image(&registry.address, "berth-test/broken", "diffid", &[wrong], oci::host_architecture(), "");
    let err = pull(&mut client, &pushed.reference).await.unwrap_err();
    assert!(err.message().contains("uncompressed content has digest"), "{}", err.message());

    assert!(list(&mut client).await.is_empty());
    assert_store_empty(&dirs);
    // Once the cause is gone, the pull succeeds.
    assert_eq!(pull(&mut client, &busybox.reference).await.unwrap(), busybox.config_digest);
}

/// A TCP server on loopback that accepts connections and never answers: a hung registry.
fn silent_registry() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (address, handle)
}

#[tokio::test]
async fn a_hung_registry_hits_the_stall_timeout_or_the_deadline() {
    let (address, _server) = silent_registry();
    let config = format!("[images]\nstall_timeout_seconds = 1\n\n{}", insecure(&address));
    let (dirs, daemon) = start(&config);
    let mut client = daemon.client().await;
    let image = format!("{address}/hung:latest");

    let started = std::time::Instant::now();
    let err = pull(&mut client, &image).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with("RegistryUnavailable: ") && err.message().contains("stall timeout"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(9), "stall detection took {:?}", started.elapsed());

    // A deadline shorter than the stall timeout: DeadlineExceeded.
    let (fast_dirs, fast_daemon) = start(&insecure(&address));
    let mut fast = fast_daemon.client().await;
    let mut request = tonic::Request::new(PullImageRequest { image: spec(&image), auth: None, sandbox_config: None });
    request.set_timeout(Duration::from_millis(800));
    let err = fast.image.pull_image(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(list(&mut fast).await.is_empty());
    assert_store_empty(&dirs);
    assert_store_empty(&fast_dirs);
}

#[tokio::test]
async fn images_survive_a_restart_and_a_crash_mid_pull_leaves_nothing() {
    let registry = TestRegistry::get();
    let (busybox, big) = (registry.image("busybox"), registry.image("big"));
    let dirs = DaemonDirs::new();
    dirs.write_config(&insecure(&registry.address));
    let mut daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    pull(&mut client, &busybox.reference).await.unwrap();
    drop(client);
    assert!(daemon.stop(Signal::SIGTERM).await.success());

    let mut daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    assert_eq!(status(&mut client, &busybox.reference).await.map(|i| i.id), Some(busybox.config_digest.clone()));

    // Kill the daemon while it pulls the big image: after a restart nothing of it is listed or on disk.
    let mut other = client.clone();
    let big_ref = big.reference.clone();
    let pulling = tokio::spawn(async move { pull(&mut other, &big_ref).await });
    let tmp = dirs.root().join("images/tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while entries(&tmp).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the big pull never started unpacking");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.stop(Signal::SIGKILL).await;
    let _ = pulling.await;
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    let images = list(&mut client).await;
    assert_eq!(images.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![busybox.config_digest.as_str()]);
    let store = dirs.root().join("images");
    for dir in ["ingest", "tmp", "trash"] {
        assert_eq!(entries(&store.join(dir)), Vec::<String>::new(), "{dir}");
    }
    assert_eq!(entries(&store.join("snapshots")).len(), 1, "only busybox's layer is left");
    assert_eq!(entries(&store.join("blobs/sha256")).len(), 3, "only busybox's manifest, config and layer are left");
    // And the interrupted pull succeeds now.
    assert_eq!(pull(&mut client, &big.reference).await.unwrap(), big.config_digest);
}

/// Unmounts a test's tmpfs however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_pull_cleanly_and_a_smaller_image_still_fits() {
    let registry = TestRegistry::get();
    let dirs = DaemonDirs::new();
    // The image store on a 24 MiB filesystem: the ~106 MB image cannot fit, busybox (~2 MB unpacked) can.
    std::fs::create_dir_all(dirs.root()).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &dirs.root(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=24m,mode=0700"),
    )
    .expect("mount a small tmpfs as the root directory");
    let _unmount = Unmount(dirs.root());
    dirs.write_config(&insecure(&registry.address));
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;

    let err = pull(&mut client, &registry.image("big").reference).await.expect_err("a 106 MB image in 24 MiB");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("No space left on device"), "{}", err.message());
    assert!(list(&mut client).await.is_empty(), "a half image is listed");
    assert_store_empty(&dirs);

    let busybox = registry.image("busybox");
    assert_eq!(pull(&mut client, &busybox.reference).await.expect("busybox fits"), busybox.config_digest);
}
