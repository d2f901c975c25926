//! The checkpoint archive: an uncompressed tar in the layout CRI-O and Podman write, so `checkpointctl` and
//! their restore paths read berth's archives and berth reads theirs.
//!
//! ```text
//! config.dump        who the container was (id, name, image, times): [`ConfigDump`]
//! spec.dump          its OCI runtime spec (config.json as it ran)
//! checkpoint/        CRIU's image directory (inventory.img, ...), with descriptors.json: what fds 0-2 were
//! rootfs-diff.tar    what the container changed in its root filesystem (the overlay's upper directory)
//! deleted.files      JSON list of the image's files the container deleted (the upper directory's whiteouts)
//! container.log      its CRI log as it was
//! dump.log           CRIU's log of the dump; stats-dump: CRIU's figures of it
//! ```

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CheckpointError;

pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const CONTAINER_LOG: &str = "container.log";
pub const DUMP_LOG: &str = "dump.log";
/// Inside the CRIU image directory: what the container's fds 0, 1 and 2 were (`pipe:[inode]`, `/dev/null`),
/// so a restore can hand it new ones in their place (runc names it the same).
pub const DESCRIPTORS: &str = "descriptors.json";

/// `config.dump`: the fields CRI-O writes and checkpointctl shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    pub id: String,
    pub name: String,
    /// The image as the container was created from it (`ImageSpec.image`).
    pub rootfs_image: String,
    /// The image id (`sha256:...`).
    pub rootfs_image_ref: String,
    /// The image's name as the user gave it.
    pub rootfs_image_name: String,
    pub runtime: String,
    /// RFC 3339 times.
    pub created_time: String,
    pub checkpointed_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restored_time: String,
    #[serde(default)]
    pub restored: bool,
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io { step, path: path.to_owned(), source }
}

/// Writes `value` as JSON to `dir/name`.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), CheckpointError> {
    let path = dir.join(name);
    let bytes = serde_json::to_vec_pretty(value).expect("checkpoint metadata serializes");
    std::fs::write(&path, bytes).map_err(io("write", &path))
}

/// What the container changed below its root: written as `rootfs-diff.tar` under `out`, and the paths
/// it deleted (absolute, as seen in the container) returned for `deleted.files`. `skipped` are the
/// destinations of mounts (relative to the root): overlayfs made empty stand-ins for them, which are
/// the mounts', not the container's.
pub fn write_rootfs_diff(upper: &Path, skipped: &[PathBuf], out: &Path) -> Result<Vec<String>, CheckpointError> {
    let tar_path = out.join(ROOTFS_DIFF);
    let file = std::fs::File::create(&tar_path).map_err(io("create", &tar_path))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    let mut deleted = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = upper.join(&relative);
        let mut entries: Vec<_> =
            std::fs::read_dir(&dir).map_err(io("read", &dir))?.collect::<Result<_, _>>().map_err(io("read", &dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = relative.join(entry.file_name());
            if skipped.iter().any(|s| s == &name) {
                continue;
            }
            let path = entry.path();
            let metadata = std::fs::symlink_metadata(&path).map_err(io("inspect", &path))?;
            // overlayfs records a deletion as a 0:0 character device of the deleted name.
            if metadata.file_type().is_char_device() && metadata.rdev() == 0 {
                deleted.push(Path::new("/").join(&name).display().to_string());
                continue;
            }
            builder.append_path_with_name(&path, &name).map_err(io("archive", &path))?;
            if metadata.is_dir() {
                pending.push(name);
            }
        }
    }
    let writer = builder.into_inner().map_err(io("finish", &tar_path))?;
    writer.into_inner().map_err(|e| CheckpointError::Io {
        step: "flush",
        path: tar_path.clone(),
        source: e.into_error(),
    })?;
    deleted.sort();
    Ok(deleted)
}

/// Packs the checkpoint directory `dir` into the archive at `location`: `config.dump` and `spec.dump` first
/// (a reader that only wants to know what the archive holds stops early), then CRIU's images, then the
/// rest. Written to a temporary file (0600: it holds the container's memory) beside `location`, synced
/// and renamed, so `location` is either whole or absent.
pub fn pack(dir: &Path, location: &Path) -> Result<(), CheckpointError> {
    let parent = location.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    let file_name = location.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = parent.join(format!(".{file_name}.{}.partial", std::process::id()));
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io("create", &temporary))?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        builder.follow_symlinks(false);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(io("read", dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        let rank = |name: &str| match name {
            CONFIG_DUMP => 0,
            SPEC_DUMP => 1,
            CHECKPOINT_DIR => 2,
            _ => 3,
        };
        names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        for name in names {
            let path = dir.join(&name);
            if path.is_dir() {
                builder.append_dir_all(&name, &path).map_err(io("archive", &path))?;
            } else {
                builder.append_path_with_name(&path, &name).map_err(io("archive", &path))?;
            }
        }
        let mut writer = builder.into_inner().map_err(io("finish", &temporary))?;
        writer.flush().map_err(io("write", &temporary))?;
        let file = writer.into_inner().map_err(|e| CheckpointError::Io {
            step: "write",
            path: temporary.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io("sync", &temporary))?;
        std::fs::rename(&temporary, location).map_err(io("rename into place", location))?;
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io("sync", parent))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Unpacks a checkpoint archive into `dest` (which must be empty), refusing entries that would land
/// outside it.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), CheckpointError> {
    let file = std::fs::File::open(archive).map_err(io("open", archive))?;
    let mut reader = tar::Archive::new(std::io::BufReader::new(file));
    reader.set_preserve_permissions(true);
    reader.set_overwrite(false);
    for entry in reader.entries().map_err(io("read", archive))? {
        let mut entry = entry.map_err(io("read", archive))?;
        // unpack_in refuses `..` and absolute names.
        if !entry.unpack_in(dest).map_err(io("unpack", archive))? {
            let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(CheckpointError::InvalidArchive {
                path: archive.to_owned(),
                reason: format!("entry {name:?} points outside the archive"),
            });
        }
    }
    Ok(())
}

/// `config.dump` and `spec.dump` of an archive, read from its first entries without unpacking it.
pub fn read_metadata(archive: &Path) -> Result<(ConfigDump, oci_spec::runtime::Spec), CheckpointError> {
    let invalid = |reason: String| CheckpointError::InvalidArchive { path: archive.to_owned(), reason };
    let file = std::fs::File::open(archive).map_err(io("open", archive))?;
    let mut reader = tar::Archive::new(std::io::BufReader::new(file));
    let (mut config, mut spec) = (None, None);
    let unreadable = |e: std::io::Error| invalid(format!("not a readable tar archive: {e}"));
    for entry in reader.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
        match name.as_str() {
            CONFIG_DUMP => {
                config = Some(serde_json::from_reader(entry).map_err(|e| invalid(format!("{CONFIG_DUMP}: {e}")))?)
            }
            SPEC_DUMP => spec = Some(serde_json::from_reader(entry).map_err(|e| invalid(format!("{SPEC_DUMP}: {e}")))?),
            _ => {}
        }
        if config.is_some() && spec.is_some() {
            break;
        }
    }
    match (config, spec) {
        (Some(config), Some(spec)) => Ok((config, spec)),
        _ => Err(invalid(format!("no {CONFIG_DUMP} and {SPEC_DUMP}: not a container checkpoint"))),
    }
}

/// `config.dump` and `spec.dump` of a checkpoint's files in a directory (a checkpoint image's layer).
pub fn read_metadata_dir(dir: &Path) -> Result<(ConfigDump, oci_spec::runtime::Spec), CheckpointError> {
    let read = |name: &str| -> Result<Vec<u8>, CheckpointError> {
        std::fs::read(dir.join(name)).map_err(|e| CheckpointError::InvalidArchive {
            path: dir.to_owned(),
            reason: format!("no readable {name}: {e}"),
        })
    };
    let invalid = |name: &str, e: serde_json::Error| CheckpointError::InvalidArchive {
        path: dir.join(name),
        reason: e.to_string(),
    };
    let config = serde_json::from_slice(&read(CONFIG_DUMP)?).map_err(|e| invalid(CONFIG_DUMP, e))?;
    let spec = serde_json::from_slice(&read(SPEC_DUMP)?).map_err(|e| invalid(SPEC_DUMP, e))?;
    Ok((config, spec))
}

/// Copies an unpacked image layer's files into `dest` (modes kept; a layer above replaces what a layer
/// below put there; the layer's whiteouts are not files of the checkpoint and are skipped).
pub fn copy_layer(layer: &Path, dest: &Path) -> Result<(), CheckpointError> {
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let from_dir = layer.join(&relative);
        for entry in std::fs::read_dir(&from_dir).map_err(io("read", &from_dir))? {
            let entry = entry.map_err(io("read", &from_dir))?;
            let name = relative.join(entry.file_name());
            let (from, to) = (entry.path(), dest.join(&name));
            let metadata = std::fs::symlink_metadata(&from).map_err(io("inspect", &from))?;
            if metadata.is_dir() {
                match std::fs::create_dir(&to) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => return Err(CheckpointError::Io { step: "create", path: to, source }),
                }
                std::fs::set_permissions(&to, metadata.permissions()).map_err(io("chmod", &to))?;
                pending.push(name);
            } else if metadata.is_file() {
                std::fs::copy(&from, &to).map_err(io("copy", &from))?;
            } else if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&from).map_err(io("read", &from))?;
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(target, &to).map_err(io("create", &to))?;
            }
        }
    }
    Ok(())
}

/// Brings the root filesystem changes of an unpacked checkpoint (`dir`) into the new container's mounted
/// root: `rootfs-diff.tar` unpacked over it (owners and modes kept; nothing may land outside it), then
/// every path of `deleted.files` removed.
pub fn apply_rootfs_changes(dir: &Path, rootfs: &Path) -> Result<(), CheckpointError> {
    let diff = dir.join(ROOTFS_DIFF);
    if diff.exists() {
        let file = std::fs::File::open(&diff).map_err(io("open", &diff))?;
        let mut reader = tar::Archive::new(std::io::BufReader::new(file));
        reader.set_preserve_permissions(true);
        reader.set_preserve_ownerships(true);
        reader.set_preserve_mtime(true);
        reader.set_overwrite(true);
        for entry in reader.entries().map_err(io("read", &diff))? {
            let mut entry = entry.map_err(io("read", &diff))?;
            if !entry.unpack_in(rootfs).map_err(io("unpack into the container's root", &diff))? {
                let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
                return Err(CheckpointError::InvalidArchive {
                    path: diff.clone(),
                    reason: format!("entry {name:?} points outside the root filesystem"),
                });
            }
        }
    }
    let deleted_path = dir.join(DELETED_FILES);
    let deleted: Vec<String> = match std::fs::read(&deleted_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::InvalidArchive { path: deleted_path.clone(), reason: e.to_string() })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(CheckpointError::Io { step: "read", path: deleted_path, source }),
    };
    let root = std::fs::canonicalize(rootfs).map_err(io("open", rootfs))?;
    for name in deleted {
        remove_inside(&root, Path::new(&name))?;
    }
    Ok(())
}

/// Removes `name` (as the container sees it) below `root`, never following a symbolic link out of it.
fn remove_inside(root: &Path, name: &Path) -> Result<(), CheckpointError> {
    let relative = name.strip_prefix("/").unwrap_or(name);
    if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(CheckpointError::InvalidArchive {
            path: PathBuf::from(DELETED_FILES),
            reason: format!("{} is not a plain path", name.display()),
        });
    }
    let (Some(parent), Some(file_name)) = (relative.parent(), relative.file_name()) else { return Ok(()) };
    let parent = match std::fs::canonicalize(root.join(parent)) {
        Ok(parent) if parent.starts_with(root) => parent,
        // Already gone with its directory, or a link that leaves the root: nothing of the container's.
        _ => return Ok(()),
    };
    let path = parent.join(file_name);
    let result = match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
        Err(_) => Ok(()),
    };
    result.map_err(io("remove a file the container had deleted", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_names(archive: &Path) -> Vec<String> {
        let mut reader = tar::Archive::new(std::fs::File::open(archive).unwrap());
        reader.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn root_filesystem_changes_land_in_the_root_and_deletions_never_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/app.conf"), b"changed").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        write_rootfs_diff(&upper, &[], &out).unwrap();
        write_json(&out, DELETED_FILES, &["/etc/old.conf", "/escape/victim", "/var/cache"]).unwrap();

        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(rootfs.join("var/cache/x")).unwrap();
        std::fs::write(rootfs.join("etc/old.conf"), b"old").unwrap();
        // A link in the container's root that points at the host: removing through it must not reach out.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"host").unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("escape")).unwrap();

        apply_rootfs_changes(&out, &rootfs).unwrap();
        assert_eq!(std::fs::read(rootfs.join("etc/app.conf")).unwrap(), b"changed");
        assert!(!rootfs.join("etc/old.conf").exists());
        assert!(!rootfs.join("var/cache").exists());
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"host");

        write_json(&out, DELETED_FILES, &["/etc/../../outside/victim"]).unwrap();
        assert!(matches!(apply_rootfs_changes(&out, &rootfs), Err(CheckpointError::InvalidArchive { .. })));
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"host");
    }

    #[test]
    fn metadata_is_read_from_the_archive_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        std::fs::create_dir_all(content.join(CHECKPOINT_DIR)).unwrap();
        let config = ConfigDump {
            id: "c1".into(),
            name: "counter".into(),
            rootfs_image: "busybox".into(),
            rootfs_image_ref: "sha256:00".into(),
            rootfs_image_name: "docker.io/library/busybox:latest".into(),
            runtime: "berth".into(),
            created_time: "2026-01-01T00:00:00.000000000Z".into(),
            checkpointed_time: "2026-01-01T00:00:01.000000000Z".into(),
            restored_time: String::new(),
            restored: false,
        };
        write_json(&content, CONFIG_DUMP, &config).unwrap();
        std::fs::write(
            content.join(SPEC_DUMP),
            br#"{"ociVersion": "1.2.0", "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}}"#,
        )
        .unwrap();
        let location = dir.path().join("c.tar");
        pack(&content, &location).unwrap();
        let (read, spec) = read_metadata(&location).unwrap();
        assert_eq!(read, config);
        assert_eq!(spec.process().as_ref().unwrap().args().as_deref(), Some(&["sh".to_owned()][..]));

        let not_tar = dir.path().join("x.tar");
        std::fs::write(&not_tar, b"plain bytes").unwrap();
        assert!(matches!(read_metadata(&not_tar), Err(CheckpointError::InvalidArchive { .. })));
    }

    #[test]
    fn the_archive_puts_the_metadata_first_and_names_entries_without_a_dot_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        std::fs::create_dir_all(content.join(CHECKPOINT_DIR)).unwrap();
        for name in [DUMP_LOG, SPEC_DUMP, CONFIG_DUMP, ROOTFS_DIFF] {
            std::fs::write(content.join(name), name).unwrap();
        }
        std::fs::write(content.join(CHECKPOINT_DIR).join("inventory.img"), b"inv").unwrap();
        let location = dir.path().join("out.tar");
        pack(&content, &location).unwrap();
        assert_eq!(
            entry_names(&location),
            ["config.dump", "spec.dump", "checkpoint/", "checkpoint/inventory.img", "dump.log", "rootfs-diff.tar"]
        );
        assert_eq!(std::fs::metadata(&location).unwrap().mode() & 0o777, 0o600);
        assert!(
            !std::fs::read_dir(dir.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial"))
        );

        let unpacked = dir.path().join("unpacked");
        std::fs::create_dir(&unpacked).unwrap();
        unpack(&location, &unpacked).unwrap();
        assert_eq!(std::fs::read(unpacked.join(CHECKPOINT_DIR).join("inventory.img")).unwrap(), b"inv");
    }

    #[test]
    fn a_pack_into_a_missing_directory_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_DUMP), b"{}").unwrap();
        let err = pack(dir.path(), &dir.path().join("missing").join("out.tar")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn the_rootfs_diff_holds_changes_and_lists_whiteouts_as_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("data")).unwrap();
        std::fs::write(upper.join("etc/added"), b"new").unwrap();
        std::fs::write(upper.join("etc/hosts"), b"").unwrap();
        nix::sys::stat::mknod(
            &upper.join("etc/removed"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o000),
            0,
        )
        .unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let deleted = write_rootfs_diff(&upper, &[PathBuf::from("etc/hosts"), PathBuf::from("data")], &out).unwrap();
        assert_eq!(deleted, ["/etc/removed"]);
        assert_eq!(entry_names(&out.join(ROOTFS_DIFF)), ["etc", "etc/added"]);
    }

    #[test]
    fn an_archive_whose_entries_escape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("evil.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        let name = b"../escaped";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        builder.finish().unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        assert!(unpack(&archive, &dest).is_err());
        assert!(!dir.path().join("escaped").exists());
    }
}
