//! `berth __init`: the freshly exec'd, single-threaded helper that builds a container.
//!
//! The runtime (any caller of this crate, threaded or not) starts it with `std::process::Command` and
//! nothing else between fork and exec; the channel to the runtime is its standard input. The helper checks
//! it has one thread, enters or creates the namespaces, then clones the container process with
//! `CLONE_PARENT`, so that process is the runtime's child (the runtime can wait for it) while this helper
//! exits. The container process sets up the root filesystem and the process, reports `Ready`, waits at the
//! start gate (create) and execs the container's program.

mod console;
mod container;
mod idmap;
mod process;
mod rootfs;

pub(crate) use rootfs::create_mount_points;
pub use rootfs::is_bind_mount;

use std::convert::Infallible;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns, unshare};
use oci_spec::runtime::LinuxNamespaceType;

use crate::error::{Result, RuntimeError};
use crate::namespaces;
use crate::sync::{Channel, InitConfig, Message};

/// Entry point of the `__init` subcommand. Never returns.
pub fn main() -> ! {
    let channel = match take_channel() {
        Ok(channel) => channel,
        Err(err) => {
            eprintln!("berth init: {}", berth_error_kind::chain(&err));
            std::process::exit(1);
        }
    };
    match helper(&channel) {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            let _ = channel.send(&Message::Error { message: berth_error_kind::chain(&err) });
            std::process::exit(1);
        }
    }
}

/// Moves the channel off stdin (close-on-exec, above 2) and puts /dev/null on stdin until the container's
/// own stdio arrives.
fn take_channel() -> Result<Channel> {
    let fd = nix::fcntl::fcntl(std::io::stdin(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(RuntimeError::sys("move the init channel off stdin"))?;
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    let channel = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(fd) });
    let null = std::fs::File::open("/dev/null").map_err(RuntimeError::io("open", "/dev/null"))?;
    let mut stdin_fd = unsafe_target(0);
    nix::unistd::dup2(&null, &mut stdin_fd).map_err(RuntimeError::sys("put /dev/null on stdin"))?;
    std::mem::forget(stdin_fd);
    Ok(channel)
}

/// A standard descriptor (0, 1, 2) as an owned fd, only as dup2's target; callers always forget it.
pub(crate) fn unsafe_target(fd: RawFd) -> OwnedFd {
    // SAFETY: fds 0-2 are open for the life of the process (our parent set them up); the returned OwnedFd
    // is always forgotten by callers, never dropped, so it never closes the descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Fails unless the calling process has exactly one thread: fork and clone copy only the calling thread,
/// and a lock another thread held (malloc's, say) would stay locked forever in the child.
pub fn ensure_single_threaded() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(RuntimeError::io("read", "/proc/self/status"))?;
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    if threads == 1 { Ok(()) } else { Err(RuntimeError::NotSingleThreaded { threads }) }
}

fn helper(channel: &Channel) -> Result<()> {
    ensure_single_threaded()?;
    // Not dumpable: until it execs, no process in the container may open our /proc/<pid>/exe (the berth
    // binary) or our memory (the runc CVE-2019-5736 class). execve of the container's program resets it.
    nix::sys::prctl::set_dumpable(false).map_err(RuntimeError::sys("prctl(PR_SET_DUMPABLE, 0)"))?;
    let Some((Message::Bootstrap(mut config), fds)) = channel.receive()? else {
        return Err(RuntimeError::Setup("the runtime sent no bootstrap message".into()));
    };
    if config.join_pid.is_none() {
        // Before any namespace is joined: only the host's root may idmap the host's filesystems.
        idmap::stage(&mut config)?;
    }
    match config.join_pid {
        Some(pid) => join_namespaces_of(pid)?,
        None => enter_namespaces(channel, &config)?,
    }
    let child = clone_parent()?;
    if child == 0 {
        container::run(channel, *config, fds);
    }
    channel.send(&Message::Pid { pid: child })
}

/// Joins the namespaces the spec names by path, then creates the new ones.
fn enter_namespaces(channel: &Channel, config: &InitConfig) -> Result<()> {
    let spec = &config.spec;
    let listed = namespaces::of(spec);
    // The user namespace first (namespaces::ALL's order): the others a pod pins are owned by it, and
    // joining it gives the capabilities over them.
    for kind in namespaces::ALL {
        if let Some(path) = listed.iter().find(|ns| ns.typ() == kind).and_then(|ns| ns.path().clone()) {
            join(&path, kind)?;
        }
    }
    if listed.iter().any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_some()) {
        // Its maps were written by whoever made it. Become its root (runc does the same): until the
        // container's own user is set, files the setup creates (mount points) belong to the namespace's
        // root, not to an unmapped id.
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(RuntimeError::sys("setresgid(0) in the joined user namespace"))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(RuntimeError::sys("setresuid(0) in the joined user namespace"))?;
    }
    if namespaces::creates(spec, LinuxNamespaceType::User) {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(RuntimeError::sys("unshare(CLONE_NEWUSER)"))?;
        channel.send(&Message::MapIds)?;
        match channel.receive()? {
            Some((Message::IdsMapped, _)) => {}
            _ => {
                return Err(RuntimeError::Init {
                    id: config.id.clone(),
                    message: "uid/gid maps were not written".into(),
                });
            }
        }
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(RuntimeError::sys("setresgid(0) in the new user namespace"))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(RuntimeError::sys("setresuid(0) in the new user namespace"))?;
    }
    let mut flags = CloneFlags::empty();
    for kind in namespaces::ALL {
        if kind != LinuxNamespaceType::User && namespaces::creates(spec, kind) {
            flags |= namespaces::flag(kind);
        }
    }
    if !flags.is_empty() {
        unshare(flags).map_err(RuntimeError::sys(format!("unshare({flags:?})")))?;
    }
    if namespaces::creates(spec, LinuxNamespaceType::Time)
        && let Some(offsets) = spec.linux().as_ref().and_then(|l| l.time_offsets().clone())
    {
        // Written before the first process enters the new time namespace (time_namespaces(7)).
        let mut text = String::new();
        for (clock, offset) in offsets {
            text.push_str(&format!("{clock} {} {}\n", offset.secs().unwrap_or(0), offset.nanosecs().unwrap_or(0)));
        }
        std::fs::write("/proc/self/timens_offsets", text)
            .map_err(RuntimeError::io("write", "/proc/self/timens_offsets"))?;
    }
    Ok(())
}

fn join(path: &Path, kind: LinuxNamespaceType) -> Result<()> {
    let file = std::fs::File::open(path).map_err(RuntimeError::io("open namespace", path))?;
    setns(&file, namespaces::flag(kind)).map_err(RuntimeError::sys(format!(
        "setns into the {} namespace {}",
        namespaces::proc_name(kind),
        path.display()
    )))
}

/// Enters every namespace of `pid` that differs from ours (exec into a running container).
fn join_namespaces_of(pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Open them all first: after joining the mount namespace, /proc/<pid> may not be reachable.
    let mut targets = Vec::new();
    for kind in namespaces::ALL {
        let theirs = format!("/proc/{pid}/ns/{}", namespaces::proc_name(kind));
        let ours = format!("/proc/self/ns/{}", namespaces::proc_name(kind));
        let (Ok(their_meta), Ok(our_meta)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else { continue };
        if their_meta.ino() != our_meta.ino() || their_meta.dev() != our_meta.dev() {
            let file = std::fs::File::open(&theirs).map_err(RuntimeError::io("open namespace", &theirs))?;
            targets.push((kind, theirs, file));
        }
    }
    // The mount namespace last: it changes our root and working directory.
    targets.sort_by_key(|(kind, ..)| *kind == LinuxNamespaceType::Mount);
    for (kind, path, file) in targets {
        setns(&file, namespaces::flag(kind)).map_err(RuntimeError::sys(format!("setns into {path}")))?;
    }
    Ok(())
}

/// Clones the container process as a sibling of this helper (a child of the runtime): fork semantics.
fn clone_parent() -> Result<i32> {
    // SAFETY: the process is single-threaded (checked when the helper started, and it starts no thread), so the child gets a consistent copy of
    // all memory with no lock held by a vanished thread. A null stack makes the child continue on its own
    // copy of the current stack, exactly like fork(2); no other argument points into our memory.
    let result = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if result < 0 {
        return Err(RuntimeError::sys("clone(CLONE_PARENT) of the container process")(nix::errno::Errno::last()));
    }
    Ok(result as i32)
}

/// Sends a failure to the runtime and ends the container process.
fn fail(channel: &Channel, err: &RuntimeError) -> ! {
    let message = berth_error_kind::chain(err);
    if channel.send(&Message::Error { message: message.clone() }).is_err() {
        // Nobody listens any more (a failure after the start gate): the container's stderr is where its
        // owner will look.
        eprintln!("berth init: {message}");
    }
    // SAFETY: _exit only ends the process; skipping atexit handlers is intended in a cloned child.
    unsafe { libc::_exit(1) }
}

pub(crate) type Never = Infallible;

#[cfg(test)]
mod tests {
    #[test]
    fn cloning_is_refused_once_a_second_thread_exists() {
        // The test harness runs each test on its own thread, so the process is already multi-threaded here.
        let err = super::ensure_single_threaded().unwrap_err();
        assert!(matches!(err, crate::RuntimeError::NotSingleThreaded { threads } if threads >= 2), "{err}");
    }
}
