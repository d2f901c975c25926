//! Applying one layer's tar stream to an empty snapshot directory, as an overlayfs lower layer.
//!
//! The tar stream is untrusted. Every path is cleaned lexically first (a leading `/` means the snapshot's
//! root, as GNU tar and containerd take it; a `..` that would climb above the root fails the layer), and
//! every directory an entry is created in is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! relative to the snapshot's root, so the kernel itself refuses any walk through a symlink (one the layer
//! planted earlier or any other) or out of the directory. The final component is always created with
//! `O_EXCL`/`O_NOFOLLOW`-style calls, never followed. A refused entry fails the whole layer with an error
//! naming it; the caller then deletes the half-made directory.
//!
//! OCI whiteouts become overlayfs ones (overlayfs documentation, "whiteouts and opaque directories"):
//! `.wh.NAME` becomes a 0/0 character device `NAME`, and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on
//! its directory. Ownership, modes (setuid/setgid/sticky included), mtimes, xattrs (file capabilities are
//! `security.capability`), hard links, symlinks, devices and fifos are kept.
//!
//! Real layers are not always well formed: umoci 0.4 and others end the stream without the two zero blocks
//! or with short padding. Callers wrap the stream in [`ZeroPadded`], which supplies the missing zeros after
//! the end of the data; truncation inside an entry is still caught, by the diff ID check over the real bytes.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags};
use rustix::fs::{Gid, Uid};
use rustix::io::Errno;

/// Why a layer could not be applied. Every variant names the tar entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?} would write outside the snapshot: {why}")]
    Escape { entry: String, why: &'static str },
    #[error("layer entry {entry:?}: {step}")]
    Entry {
        entry: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?} has unsupported tar type {kind:?}")]
    Unsupported { entry: String, kind: char },
    #[error("cannot read the layer's tar stream")]
    Read(#[source] io::Error),
    #[error("cannot open the snapshot directory {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// The underlying I/O error, for deciding whether a disk is full.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            UnpackError::Entry { source, .. } | UnpackError::Read(source) | UnpackError::Open { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Default, Clone)]
pub struct UnpackStats {
    pub entries: u64,
    pub file_bytes: u64,
    /// Hard links whose target is not in this layer but (presumably) in a lower one; see
    /// [`resolve_deferred_links`].
    pub deferred_links: Vec<DeferredLink>,
}

/// A hard link to a file of a lower layer: `path` should have the content of `target` as the layers below
/// show it. Paths are cleaned and relative to the snapshot root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredLink {
    pub entry: String,
    pub path: Vec<u8>,
    pub target: Vec<u8>,
}

/// Applies the tar stream `reader` to the empty directory `dir`. The reader is returned so the caller can
/// drain what follows the end-of-archive marker (it belongs to the digests too).
pub fn unpack<R: Read>(reader: R, dir: &Path) -> Result<(UnpackStats, R), UnpackError> {
    let root =
        rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| UnpackError::Open { path: dir.to_owned(), source: e.into() })?;
    let mut archive = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    let mut directories: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    {
        let entries = archive.entries().map_err(UnpackError::Read)?;
        for entry in entries {
            let mut entry = entry.map_err(UnpackError::Read)?;
            stats.entries += 1;
            apply(&root, &mut entry, &mut directories, &mut buffer, &mut stats)?;
        }
    }
    // Directory mtimes last, deepest first: creating entries inside a directory changes its mtime.
    directories.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (path, mtime) in directories {
        if let Ok(fd) = open_beneath(&root, &path, OFlags::DIRECTORY | OFlags::RDONLY) {
            let _ = rustix::fs::futimens(&fd, &timestamps(mtime));
        }
    }
    Ok((stats, archive.into_inner()))
}

/// A cleaned entry path: components relative to the snapshot root, none of them `.`, `..` or empty.
fn clean(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

/// Opens `path` (relative, already cleaned) below `root` without following any symlink and without
/// leaving `root`: the kernel enforces both.
fn open_beneath(root: &OwnedFd, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let path: &OsStr = if path.is_empty() { OsStr::new(".") } else { OsStr::from_bytes(path) };
    rustix::fs::openat2(
        root,
        path,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(io::Error::from)
}

struct Ctx<'a> {
    entry: &'a str,
}

impl Ctx<'_> {
    fn fail(&self, step: &'static str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        move |source| UnpackError::Entry { entry: self.entry.to_owned(), step, source }
    }
    fn errno(&self, step: &'static str) -> impl FnOnce(Errno) -> UnpackError + '_ {
        move |errno| UnpackError::Entry { entry: self.entry.to_owned(), step, source: errno.into() }
    }
    fn escape(&self, why: &'static str) -> UnpackError {
        UnpackError::Escape { entry: self.entry.to_owned(), why }
    }
}

/// Opens the directory that will hold an entry, creating missing directories (0755, root-owned, as
/// docker does for parents a layer leaves out). A symlink or a non-directory on the way fails the entry.
fn parent_dir(root: &OwnedFd, parents: &[&[u8]], ctx: &Ctx) -> Result<OwnedFd, UnpackError> {
    match open_beneath(root, &join(parents), OFlags::DIRECTORY | OFlags::RDONLY) {
        Ok(fd) => return Ok(fd),
        Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
        Err(err) => return Err(walk_refusal(err, ctx)),
    }
    let mut current =
        rustix::fs::openat(root, ".", OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(ctx.errno("open the snapshot root"))?;
    for part in parents {
        let name = OsStr::from_bytes(part);
        match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(errno) => return Err(ctx.errno("create a parent directory")(errno)),
        }
        current = open_beneath(&current, part, OFlags::DIRECTORY | OFlags::RDONLY).map_err(|e| walk_refusal(e, ctx))?;
    }
    Ok(current)
}

/// Sets the owner of `name` in `dir` itself (a symlink, not its target).
fn chown_entry(dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> rustix::io::Result<()> {
    rustix::fs::chownat(dir, name, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::SYMLINK_NOFOLLOW)
}

fn walk_refusal(err: io::Error, ctx: &Ctx) -> UnpackError {
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::LOOP) => ctx.escape("a directory on its path is a symlink"),
        Some(Errno::XDEV) => ctx.escape("its path leaves the snapshot"),
        Some(Errno::NOTDIR) => ctx.escape("a component of its path is not a directory"),
        _ => UnpackError::Entry { entry: ctx.entry.to_owned(), step: "open its parent directory", source: err },
    }
}

/// Removes whatever is at `name` in `dir` (a directory with all its content), so an entry can replace it.
fn remove_existing(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_contents(&fd)?;
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(Into::into)
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into),
    }
}

fn remove_contents(dir: &OwnedFd) -> io::Result<()> {
    let mut names = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    for name in names {
        remove_existing(dir, OsStr::from_bytes(&name))?;
    }
    Ok(())
}

fn timestamps(mtime: i64) -> Timestamps {
    let at = rustix::fs::Timespec { tv_sec: mtime, tv_nsec: 0 };
    Timestamps { last_access: at, last_modification: at }
}

/// The entry's numeric ownership, mtime and xattrs, PAX records overriding the ustar header.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn meta<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Meta> {
    let header = entry.header();
    let mut meta = Meta {
        uid: header.uid()? as u32,
        gid: header.gid()? as u32,
        mode: header.mode()? & 0o7777,
        mtime: header.mtime()? as i64,
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            let number = || std::str::from_utf8(value).ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok());
            match key {
                b"uid" => meta.uid = number().unwrap_or(meta.uid as i64) as u32,
                b"gid" => meta.gid = number().unwrap_or(meta.gid as i64) as u32,
                b"mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        meta.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// Whether a layer may set this xattr. overlayfs' own `trusted.overlay.*` attributes would let a layer
/// forge whiteouts, redirects or metacopy files, so only berth sets those (from OCI whiteouts).
fn allowed_xattr(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.overlay.")
        && (name.starts_with(b"user.") || name.starts_with(b"security.") || name.starts_with(b"trusted."))
}

fn set_owner_mode_xattrs(fd: &OwnedFd, meta: &Meta, ctx: &Ctx, set_mode: bool) -> Result<(), UnpackError> {
    // chown first: it clears setuid/setgid bits and file capabilities, which come after.
    rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
        .map_err(ctx.errno("set its owner"))?;
    if set_mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(ctx.errno("set its mode"))?;
    }
    for (name, value) in &meta.xattrs {
        if !allowed_xattr(name) {
            continue;
        }
        match rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty()) {
            Ok(()) => {}
            // A filesystem without xattr support (or a namespace it refuses) loses the attribute, as with
            // containerd; everything else is an error.
            Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                tracing::debug!(entry = ctx.entry, xattr = %String::from_utf8_lossy(name), "xattr not supported here; skipped")
            }
            Err(errno) => return Err(ctx.errno("set an xattr")(errno)),
        }
    }
    Ok(())
}

fn apply<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<R>,
    directories: &mut Vec<(Vec<u8>, i64)>,
    buffer: &mut [u8],
    stats: &mut UnpackStats,
) -> Result<(), UnpackError> {
    let raw_path = entry.path_bytes().into_owned();
    let entry_name = String::from_utf8_lossy(&raw_path).into_owned();
    let ctx = Ctx { entry: &entry_name };
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let parts = clean(&raw_path).ok_or_else(|| ctx.escape("its path climbs above the root with `..`"))?;
    let Some((name, parents)) = parts.split_last() else {
        // The root itself ("./"): the snapshot directory keeps berth's ownership and mode.
        return Ok(());
    };
    let meta = meta(entry).map_err(ctx.fail("read its header"))?;

    // Whiteouts (OCI image spec, layer.md "Whiteouts").
    if let Some(hidden) = name.strip_prefix(b".wh.") {
        let dir = parent_dir(root, parents, &ctx)?;
        if hidden == b".wh..opq" {
            rustix::fs::fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(ctx.errno("mark its directory opaque"))?;
            return Ok(());
        }
        if hidden.starts_with(b".wh.") {
            return Ok(()); // aufs bookkeeping (.wh..wh.plnk and the like): nothing to apply.
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ctx.escape("it whites out a path outside its directory"));
        }
        let hidden = OsStr::from_bytes(hidden);
        remove_existing(&dir, hidden).map_err(ctx.fail("replace an earlier entry"))?;
        rustix::fs::mknodat(&dir, hidden, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
            .map_err(ctx.errno("create its overlay whiteout"))?;
        return Ok(());
    }

    let dir = parent_dir(root, parents, &ctx)?;
    let name_os = OsStr::from_bytes(name);
    let path = join(&parts);
    match kind {
        tar::EntryType::Directory => {
            let is_dir = matches!(rustix::fs::statat(&dir, name_os, AtFlags::SYMLINK_NOFOLLOW), Ok(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory);
            if !is_dir {
                remove_existing(&dir, name_os).map_err(ctx.fail("replace an earlier entry"))?;
                rustix::fs::mkdirat(&dir, name_os, Mode::from_raw_mode(0o700))
                    .map_err(ctx.errno("create the directory"))?;
            }
            let fd = rustix::fs::openat(
                &dir,
                name_os,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(ctx.errno("open the directory"))?;
            set_owner_mode_xattrs(&fd, &meta, &ctx, true)?;
            directories.push((path, meta.mtime));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            remove_existing(&dir, name_os).map_err(ctx.fail("replace an earlier entry"))?;
            let fd = rustix::fs::openat(
                &dir,
                name_os,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(ctx.errno("create the file"))?;
            let mut file = std::fs::File::from(fd);
            loop {
                let n = entry.read(buffer).map_err(ctx.fail("read its data"))?;
                if n == 0 {
                    break;
                }
                file.write_all(&buffer[..n]).map_err(ctx.fail("write the file"))?;
                stats.file_bytes += n as u64;
            }
            let fd = OwnedFd::from(file);
            set_owner_mode_xattrs(&fd, &meta, &ctx, true)?;
            rustix::fs::futimens(&fd, &timestamps(meta.mtime)).map_err(ctx.errno("set its mtime"))?;
        }
        tar::EntryType::Symlink => {
            let target = entry.link_name_bytes().ok_or_else(|| ctx.escape("a symlink without a target"))?.into_owned();
            remove_existing(&dir, name_os).map_err(ctx.fail("replace an earlier entry"))?;
            // The target is stored, never followed while unpacking, so it may point anywhere.
            rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name_os)
                .map_err(ctx.errno("create the symlink"))?;
            chown_entry(&dir, name_os, meta.uid, meta.gid).map_err(ctx.errno("set its owner"))?;
            rustix::fs::utimensat(&dir, name_os, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(ctx.errno("set its mtime"))?;
        }
        tar::EntryType::Link => {
            let target_raw =
                entry.link_name_bytes().ok_or_else(|| ctx.escape("a hard link without a target"))?.into_owned();
            let target = clean(&target_raw).ok_or_else(|| ctx.escape("its hard link target climbs above the root"))?;
            let Some((target_name, target_parents)) = target.split_last() else {
                return Err(ctx.escape("its hard link target is the root"));
            };
            if target == parts {
                return Ok(()); // a link to itself: GNU tar writes these for repeated names
            }
            // A target missing from this layer lives in a lower one (layers are unpacked apart, in
            // parallel); the caller copies it in once the lower layers are complete, as overlayfs would
            // copy it up when the link is made on a mounted stack.
            let defer = |stats: &mut UnpackStats| {
                stats.deferred_links.push(DeferredLink {
                    entry: entry_name.clone(),
                    path: join(&parts),
                    target: join(&target),
                });
            };
            let target_dir = match open_beneath(root, &join(target_parents), OFlags::DIRECTORY | OFlags::RDONLY) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    remove_existing(&dir, name_os).map_err(ctx.fail("replace an earlier entry"))?;
                    defer(stats);
                    return Ok(());
                }
                Err(e) => {
                    return Err(match walk_refusal(e, &ctx) {
                        UnpackError::Escape { entry, .. } => UnpackError::Escape {
                            entry,
                            why: "its hard link target is reached through a symlink or outside the snapshot",
                        },
                        other => other,
                    });
                }
            };
            remove_existing(&dir, name_os).map_err(ctx.fail("replace an earlier entry"))?;
            // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
            match rustix::fs::linkat(&target_dir, OsStr::from_bytes(target_name), &dir, name_os, AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOENT) => defer(stats),
                Err(errno) => return Err(ctx.errno("create the hard link")(errno)),
            }
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let (file_type, dev) = match kind {
                tar::EntryType::Fifo => (FileType::Fifo, 0),
                other => {
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                    let t =
                        if other == tar::EntryType::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                    (t, rustix::fs::makedev(major, minor))
                }
            };
            remove_existing(&dir, name_os).map_err(ctx.fail("replace an earlier entry"))?;
            rustix::fs::mknodat(&dir, name_os, file_type, Mode::from_raw_mode(meta.mode & 0o777), dev)
                .map_err(ctx.errno("create the device node"))?;
            chown_entry(&dir, name_os, meta.uid, meta.gid).map_err(ctx.errno("set its owner"))?;
            rustix::fs::chmodat(&dir, name_os, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(ctx.errno("set its mode"))?;
            rustix::fs::utimensat(&dir, name_os, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(ctx.errno("set its mtime"))?;
        }
        other => {
            return Err(UnpackError::Unsupported { entry: entry_name.clone(), kind: other.as_byte() as char });
        }
    }
    Ok(())
}

/// Supplies up to 2 KiB of zeros after the inner reader ends, so a tar stream missing its end-of-archive
/// blocks or its last padding still reads as complete (see the module docs).
pub struct ZeroPadded<R> {
    pub inner: R,
    padded: usize,
    ended: bool,
}

impl<R> ZeroPadded<R> {
    pub fn new(inner: R) -> Self {
        ZeroPadded { inner, padded: 0, ended: false }
    }
}

impl<R: Read> Read for ZeroPadded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.ended {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.ended = true;
        }
        let n = buf.len().min(2048 - self.padded);
        buf[..n].fill(0);
        self.padded += n;
        Ok(n)
    }
}

/// Completes the hard links a layer made to files of lower layers: each `path` gets a copy of `target` as
/// the topmost of `lower` (snapshot directories, nearest first) has it, with owner, mode, mtime and xattrs.
/// A whiteout of the target on the way down, a target that is not a regular file, or no target at all fails
/// the layer naming the entry. Every path is opened beneath its snapshot, never through a symlink.
pub fn resolve_deferred_links(dir: &Path, lower: &[PathBuf], links: &[DeferredLink]) -> Result<(), UnpackError> {
    let open_root = |path: &Path| {
        rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| UnpackError::Open { path: path.to_owned(), source: e.into() })
    };
    let root = open_root(dir)?;
    let lower_roots = lower.iter().map(|p| open_root(p)).collect::<Result<Vec<_>, _>>()?;
    for link in links {
        let ctx = Ctx { entry: &link.entry };
        let missing = || UnpackError::Entry {
            entry: link.entry.clone(),
            step: "find its hard link target in this or a lower layer",
            source: io::Error::from_raw_os_error(Errno::NOENT.raw_os_error()),
        };
        let Some(source) = find_in_lower(&lower_roots, &link.target).map_err(|e| walk_refusal(e, &ctx))? else {
            return Err(missing());
        };
        let stat = rustix::fs::fstat(&source).map_err(ctx.errno("inspect its hard link target"))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(missing());
        }
        let parts = clean(&link.path).ok_or_else(|| ctx.escape("its path climbs above the root"))?;
        let Some((name, parents)) = parts.split_last() else { return Err(ctx.escape("it is the root")) };
        let parent = parent_dir(&root, parents, &ctx)?;
        let name = OsStr::from_bytes(name);
        // A later entry of this layer at the same path wins over the link.
        if rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            continue;
        }
        let target = rustix::fs::openat(
            &parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(ctx.errno("create the copy of its hard link target"))?;
        let mut from = std::fs::File::from(source);
        let mut to = std::fs::File::from(target);
        io::copy(&mut from, &mut to).map_err(ctx.fail("copy its hard link target"))?;
        copy_xattrs(&from, &to, &ctx)?;
        rustix::fs::fchown(&to, Some(Uid::from_raw(stat.st_uid)), Some(Gid::from_raw(stat.st_gid)))
            .map_err(ctx.errno("set its owner"))?;
        // After chown, which clears setuid/setgid.
        rustix::fs::fchmod(&to, Mode::from_raw_mode(stat.st_mode & 0o7777)).map_err(ctx.errno("set its mode"))?;
        rustix::fs::futimens(&to, &timestamps(stat.st_mtime)).map_err(ctx.errno("set its mtime"))?;
    }
    Ok(())
}

/// The file at `path` in the topmost lower layer that has it; `None` if absent or whited out first.
fn find_in_lower(lower: &[OwnedFd], path: &[u8]) -> io::Result<Option<OwnedFd>> {
    for layer in lower {
        match open_beneath(layer, path, OFlags::RDONLY) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd)?;
                // An overlay whiteout (0/0 character device): the file was deleted at this layer.
                if FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0 {
                    return Ok(None);
                }
                return Ok(Some(fd));
            }
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn copy_xattrs(from: &std::fs::File, to: &std::fs::File, ctx: &Ctx) -> Result<(), UnpackError> {
    let mut names = vec![0u8; 4096];
    let length = match rustix::fs::flistxattr(from, &mut names) {
        Ok(length) => length,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(errno) => return Err(ctx.errno("list the xattrs of its hard link target")(errno)),
    };
    for name in names[..length].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let mut value = vec![0u8; 64 * 1024];
        let Ok(size) = rustix::fs::fgetxattr(from, name, &mut value) else { continue };
        match rustix::fs::fsetxattr(to, name, &value[..size], XattrFlags::empty()) {
            Ok(()) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
            Err(errno) => return Err(ctx.errno("copy an xattr of its hard link target")(errno)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_tar::TarBuilder;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn unpack_bytes(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let out = unpack(ZeroPadded::new(tar), dir.path()).map(|(stats, _)| stats);
        (dir, out)
    }

    #[test]
    fn hard_links_to_lower_layers_are_completed_from_the_nearest_one() {
        let mut base = TarBuilder::new();
        base.file("bin/tool", b"old", 0o755).file("bin/gone", b"x", 0o644);
        let (bottom, out) = unpack_bytes(&base.finish());
        out.unwrap();
        let mut middle = TarBuilder::new();
        middle.file("bin/tool", b"newer", 0o4755).file("bin/.wh.gone", b"", 0o644);
        let (middle_dir, out) = unpack_bytes(&middle.finish());
        out.unwrap();
        let mut top = TarBuilder::new();
        top.hardlink("usr/bin/tool", "bin/tool").hardlink("bin/again", "bin/gone").file("bin/own", b"o", 0o644);
        let (top_dir, out) = unpack_bytes(&top.finish());
        let stats = out.unwrap();
        let paths: Vec<_> =
            stats.deferred_links.iter().map(|l| String::from_utf8_lossy(&l.path).into_owned()).collect();
        assert_eq!(paths, ["usr/bin/tool", "bin/again"]);
        let lower = [middle_dir.path().to_path_buf(), bottom.path().to_path_buf()];

        // The whited-out target fails, naming the entry.
        let err = resolve_deferred_links(top_dir.path(), &lower, &stats.deferred_links).unwrap_err();
        assert!(err.to_string().contains("bin/again"), "{err}");
        // The other link takes the nearest layer's content and mode.
        resolve_deferred_links(top_dir.path(), &lower, &stats.deferred_links[..1]).unwrap();
        let copied = top_dir.path().join("usr/bin/tool");
        assert_eq!(std::fs::read(&copied).unwrap(), b"newer");
        assert_eq!(std::fs::metadata(&copied).unwrap().permissions().mode() & 0o7777, 0o4755);
    }

    #[test]
    fn files_links_devices_owners_modes_and_times_are_kept() {
        let mut tar = TarBuilder::new();
        tar.dir("etc", 0o755)
            .file_owned("etc/shadow", b"secret", 0o640, 0, 42)
            .file("bin/su", b"suid", 0o4755)
            .symlink("bin/sh", "/bin/busybox")
            .hardlink("bin/su2", "bin/su")
            .char_device("dev/null", 1, 3)
            .fifo("run/fifo")
            .file_with_xattr(
                "bin/ping",
                b"ping",
                0o755,
                "security.capability",
                &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            );
        let (dir, out) = unpack_bytes(&tar.finish());
        out.unwrap();
        let root = dir.path();
        let shadow = std::fs::metadata(root.join("etc/shadow")).unwrap();
        assert_eq!((shadow.uid(), shadow.gid(), shadow.mode() & 0o7777), (0, 42, 0o640));
        assert_eq!(shadow.mtime(), crate::test_tar::MTIME);
        assert_eq!(std::fs::metadata(root.join("bin/su")).unwrap().permissions().mode() & 0o7777, 0o4755);
        assert_eq!(std::fs::read_link(root.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        assert_eq!(
            std::fs::metadata(root.join("bin/su2")).unwrap().ino(),
            std::fs::metadata(root.join("bin/su")).unwrap().ino()
        );
        let null = std::fs::metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert!(std::fs::metadata(root.join("run/fifo")).unwrap().file_type().is_fifo());
        let cap = rustix::fs::getxattr(root.join("bin/ping"), "security.capability", &mut [0u8; 64]).unwrap();
        assert_eq!(cap, 20, "file capability kept");
        assert_eq!(
            std::fs::metadata(root.join("etc")).unwrap().mtime(),
            crate::test_tar::MTIME,
            "dir mtime restored last"
        );
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let mut tar = TarBuilder::new();
        tar.dir("etc", 0o755).file("etc/.wh.motd", b"", 0o644).dir("var/cache", 0o755).file(
            "var/cache/.wh..wh..opq",
            b"",
            0o644,
        );
        let (dir, out) = unpack_bytes(&tar.finish());
        out.unwrap();
        let motd = std::fs::symlink_metadata(dir.path().join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device() && motd.rdev() == 0);
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
        let mut value = [0u8; 4];
        let n = rustix::fs::getxattr(dir.path().join("var/cache"), "trusted.overlay.opaque", &mut value).unwrap();
        assert_eq!(&value[..n], b"y");
    }

    #[test]
    fn streams_without_end_blocks_or_final_padding_unpack() {
        let mut tar = TarBuilder::new();
        tar.file("a", b"hello", 0o644);
        let full = tar.finish();
        // 512 header + 5 data bytes, no padding, no end blocks (as umoci 0.4 may write).
        let (dir, out) = unpack_bytes(&full[..517]);
        out.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello");
        // A header cut short is still an error (data cut short is caught by the diff ID check).
        let (_dir, out) = unpack_bytes(&full[..300]);
        assert!(out.is_err(), "{out:?}");
    }

    fn refused(tar: TarBuilder, entry: &str) {
        let outside = tempfile::tempdir().unwrap();
        let (dir, out) = unpack_bytes(&tar.finish_with_root(outside.path()));
        let err = out.expect_err("malicious layer was accepted");
        assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
        assert!(err.to_string().contains(entry), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "something was written outside");
        drop(dir);
    }

    #[test]
    fn entries_that_escape_are_refused() {
        let mut t = TarBuilder::new();
        t.file("../../evil", b"x", 0o644);
        refused(t, "../../evil");
        let mut t = TarBuilder::new();
        t.symlink("link", "{OUTSIDE}").file("link/evil", b"x", 0o644);
        refused(t, "link/evil");
        let mut t = TarBuilder::new();
        t.symlink("rel", "../../../../../../../../../../..{OUTSIDE}").file("rel/evil", b"x", 0o644);
        refused(t, "rel/evil");
        let mut t = TarBuilder::new();
        t.symlink("link", "{OUTSIDE}").hardlink("evil", "link/target");
        refused(t, "evil");
        let mut t = TarBuilder::new();
        t.hardlink("evil", "../../../etc/passwd");
        refused(t, "evil");
        let mut t = TarBuilder::new();
        t.file("a/../../.wh.x", b"", 0o644);
        refused(t, ".wh.x");
        let mut t = TarBuilder::new();
        t.file("a/.wh...", b"", 0o644);
        refused(t, ".wh...");
    }

    #[test]
    fn absolute_names_stay_inside() {
        let mut tar = TarBuilder::new();
        tar.file("/etc/hostname", b"x", 0o644);
        let (dir, out) = unpack_bytes(&tar.finish());
        out.unwrap();
        assert!(dir.path().join("etc/hostname").is_file());
    }

    #[test]
    fn later_entries_replace_earlier_ones_without_following_them() {
        let outside = tempfile::tempdir().unwrap();
        let mut tar = TarBuilder::new();
        tar.symlink("f", "{OUTSIDE}/victim").file("f", b"new", 0o644);
        let (dir, out) = unpack_bytes(&tar.finish_with_root(outside.path()));
        out.unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"new");
        assert!(!outside.path().join("victim").exists());
    }
}
