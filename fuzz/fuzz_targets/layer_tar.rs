//! A layer's tar stream through the safe-path unpacker, on a real filesystem: a scratch tmpfs holding the
//! snapshot being unpacked, a lower snapshot beside it (hard links to its files are completed from it) and
//! a directory outside both. Whatever the archive says, nothing outside the new snapshot may change: not
//! the lower snapshot, not the outside directory, and no file there may gain a hard link.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth_fuzz::{census, empty, scratch};
use berth_image::unpack;
use libfuzzer_sys::fuzz_target;

struct Scene {
    top: PathBuf,
    before: std::collections::BTreeMap<PathBuf, String>,
}

fn scene() -> &'static Scene {
    static SCENE: OnceLock<Scene> = OnceLock::new();
    SCENE.get_or_init(|| {
        let top = scratch("layer-tar");
        // The names the seeds aim at: `../outside/secret`, `/run/berth-fuzz/layer-tar/outside/secret`, and
        // the lower layer's `etc/passwd`, `bin/sh`, `data/file` and `data/link`.
        let write = |path: &str, content: &[u8]| {
            let path = top.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        };
        write("outside/secret", b"outside the snapshot\n");
        write("lower/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
        write("lower/bin/sh", b"\x7fELF");
        write("lower/data/file", b"lower content\n");
        std::os::unix::fs::symlink("../../outside/secret", top.join("lower/data/link")).unwrap();
        std::fs::create_dir(top.join("snapshot")).unwrap();
        let mut before = census(&top);
        before.retain(|path, _| !path.starts_with("snapshot"));
        Scene { top, before }
    })
}

fn check(top: &Path, before: &std::collections::BTreeMap<PathBuf, String>, step: &str) {
    let mut after = census(top);
    after.retain(|path, _| !path.starts_with("snapshot"));
    assert_eq!(&after, before, "{step} changed something outside the snapshot");
}

fuzz_target!(|data: &[u8]| {
    let Scene { top, before } = scene();
    let snapshot = top.join("snapshot");
    let lower = top.join("lower");
    if let Ok((stats, _)) = unpack::unpack(data, &snapshot) {
        check(top, before, "unpack");
        let _ = unpack::resolve_deferred_links(&snapshot, &[lower], &stats.deferred_links);
        check(top, before, "resolving deferred hard links");
    } else {
        check(top, before, "a failed unpack");
    }
    empty(&snapshot);
});
