//! The state database on a filesystem that fills up: a write fails with the I/O error (ResourceExhausted),
//! the records written before stay readable, and once space is freed writes work again in the same process
//! (redb closes a database for good after an I/O error; the store reopens it).
//!
//! Mounts a small tmpfs, so it runs as root (`make test` runs it so).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_error_kind::{ErrorKind, Kinded};
use berth_store::{Record, Store, Table};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Blob {
    id: String,
    data: String,
}

impl Record for Blob {
    const TABLE: Table = Table::Pods;
    fn key(&self) -> String {
        self.id.clone()
    }
}

fn blob(id: &str, bytes: usize) -> Blob {
    Blob { id: id.into(), data: "x".repeat(bytes) }
}

/// A tmpfs of `size` at a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "berth-store-test"])
            .arg(dir.path())
            .status()
            .expect("run mount(8)");
        assert!(status.success(), "cannot mount a tmpfs at {}: this test must run as root", dir.path().display());
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full; returns it.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        for chunk in [1 << 20, 4096] {
            let bytes = vec![0u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(n) if n == chunk => continue,
                    Ok(_) => continue,
                    Err(err) if err.raw_os_error() == Some(28) => break,
                    Err(err) => panic!("filling {}: {err}", filler.display()),
                }
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_fails_the_write_and_the_store_works_again_once_space_is_freed() {
    let disk = SmallDisk::mount("4m");
    let store = Store::open(&disk.path().join("berth.redb")).unwrap();
    store.put(&blob("before", 100)).unwrap();
    let filler = disk.fill();

    // A record larger than any free page redb may still hold in the file.
    let err = store.put(&blob("big", 256 * 1024)).expect_err("a 256 KiB record on a full disk");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err:?}");
    let text = berth_error_kind::chain(&err);
    assert!(text.contains("cannot write pods record \"big\""), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    // What was committed before is still there, read through the reopened database.
    assert_eq!(store.get::<Blob>("before").unwrap(), Some(blob("before", 100)));
    assert_eq!(store.get::<Blob>("big").unwrap(), None);

    std::fs::remove_file(filler).unwrap();
    store.put(&blob("big", 256 * 1024)).expect("the write once space is freed");
    assert_eq!(store.list::<Blob>().unwrap().len(), 2);
    drop(store);
    let reopened = Store::open(&disk.path().join("berth.redb")).unwrap();
    assert_eq!(reopened.get::<Blob>("big").unwrap(), Some(blob("big", 256 * 1024)));
}
