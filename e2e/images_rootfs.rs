//! Container root filesystems from the image store (the API the pods work calls): a real overlay mount
//! of pulled layers, OCI whiteouts honoured by overlayfs, writes landing in the container's own upper
//! directory, read-only mounts, and layers kept while a container uses them after its image is removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_image::test_tar::TarBuilder;
use berth_image::{HostConfig, ImageStore, RegistryOptions, StoreOptions};

use crate::support::oci::{self, Layer};
use crate::support::registry::TestRegistry;

/// Detaches a mount when the test ends, passed or not.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(self.0.to_str().unwrap_or("-"))
        {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn open_store(dir: &Path, registry: &str) -> Arc<ImageStore> {
    let db = Arc::new(berth_store::Store::open(&dir.join("berth.redb")).expect("open the state database"));
    let mut registry_options = RegistryOptions::default();
    registry_options.hosts.insert(registry.to_owned(), HostConfig { insecure: true, ..Default::default() });
    let options = StoreOptions { registry: registry_options, ..Default::default() };
    Arc::new(ImageStore::open(&dir.join("images"), db, options).expect("open the image store"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_rootfs_is_an_overlay_of_the_image_layers() {
    let registry = TestRegistry::get();
    let mut lower = TarBuilder::new();
    lower
        .dir("etc", 0o755)
        .file("etc/motd", b"hello\n", 0o644)
        .file("etc/keep", b"kept\n", 0o644)
        .dir("var/cache", 0o755)
        .file("var/cache/old", b"old\n", 0o644);
    let mut upper = TarBuilder::new();
    upper.file("etc/.wh.motd", b"", 0o644).file("var/cache/.wh..wh..opq", b"", 0o644).file(
        "var/cache/new",
        b"new\n",
        0o644,
    );
    let layers = [Layer::gzip(lower.finish()), Layer::gzip(upper.finish())];
    let pushed = oci::push_image(&registry.address, "berth-test/rootfs", "v1", &layers, oci::host_architecture(), "");

    let temp = tempfile::Builder::new().prefix("berth-rootfs.").tempdir().unwrap();
    let store = open_store(temp.path(), &registry.address);
    let image = store.pull(&pushed.reference, None, None).await.expect("pull");
    let target = temp.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    store.mount_rootfs("c1", &image.id.to_string(), &target, false).await.expect("mount the rootfs");
    let _unmount = Unmount(target.clone());
    // The writable layer never syncs (the kernel has had `volatile` since 5.10): unmounting it at removal
    // does not flush the upper filesystem.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        .expect("the rootfs is in mountinfo");
    // Shown as `volatile` before Linux 6.2 and as `fsync=volatile` since.
    let volatile = |o: &str| o == "volatile" || o == "fsync=volatile";
    assert!(line.split(' ').any(|field| field.split(',').any(volatile)), "{line}");

    assert_eq!(std::fs::read(target.join("etc/keep")).unwrap(), b"kept\n");
    assert!(!target.join("etc/motd").exists(), "the whiteout hides the lower file");
    assert_eq!(std::fs::read(target.join("var/cache/new")).unwrap(), b"new\n");
    assert!(!target.join("var/cache/old").exists(), "the opaque directory hides the lower content");

    std::fs::write(target.join("etc/written"), b"mine").unwrap();
    assert_eq!(std::fs::read(store.container_dir("c1").join("upper/etc/written")).unwrap(), b"mine");
    let snapshots = || std::fs::read_dir(temp.path().join("images/snapshots")).unwrap().count();
    assert_eq!(snapshots(), 2);
    assert!(
        !temp.path().join("images/snapshots").read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .join("etc/written")
            .exists())
    );

    // Removing the image while the container uses it keeps the layers the container needs.
    store.remove(&pushed.reference).await.expect("remove the image");
    assert!(store.find(&pushed.reference).await.unwrap().is_none());
    assert_eq!(snapshots(), 2, "layers in use by a container are kept");
    assert_eq!(std::fs::read(target.join("etc/keep")).unwrap(), b"kept\n");

    store.remove_rootfs("c1", &target).await.expect("remove the rootfs");
    store.remove_rootfs("c1", &target).await.expect("removing twice succeeds");
    assert!(!store.container_dir("c1").exists());
    store.collect_garbage().await.unwrap();
    assert_eq!(snapshots(), 0, "unused layers are collected once the container is gone");

    // Read-only, when asked.
    let image = store.pull(&pushed.reference, None, None).await.expect("pull again");
    store.mount_rootfs("c2", &image.id.to_string(), &target, true).await.expect("mount read-only");
    let err = std::fs::write(target.join("etc/written"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    store.remove_rootfs("c2", &target).await.unwrap();

    assert!(store.mount_rootfs("../escape", &image.id.to_string(), &target, false).await.is_err());
}
