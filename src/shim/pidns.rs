//! The PID-namespace holder of a pod that shares one PID namespace (`shareProcessNamespace`), made by the
//! shim while it is still single-threaded (before its async runtime starts): it forks a child that
//! unshares a PID namespace and forks that namespace's pid 1, which only reaps the orphans of the pod's
//! containers; the child reports that pid 1's host pid on a pipe and exits, so the holder is reparented to
//! the shim (child subreaper), which kills it when the pod goes. Forked, not exec'd: a fork of the small
//! pre-runtime shim costs about 0.3 ms, an exec of this binary about 2 ms of the pod's start.
//!
//! In a pod with its own user namespace (`hostUsers: false`) the child joins that namespace first (its
//! pinned file), so the PID namespace belongs to it: the containers' root may then mount /proc for it,
//! which a PID namespace of the host's user namespace would refuse.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{ForkResult, Pid};

/// Makes a holder and returns its host pid; `userns` is the pod's pinned user namespace, when it has one.
/// The caller must be single-threaded: the children run on after a fork without an exec.
pub fn start(userns: Option<&Path>) -> Result<i32, String> {
    // Opened here, so that the child only makes system calls.
    let userns = userns
        .map(|path| {
            std::fs::File::open(path)
                .map_err(|e| format!("cannot open the pod's user namespace {}: {e}", path.display()))
        })
        .transpose()?;
    let (read, write) =
        nix::unistd::pipe().map_err(|e| format!("cannot make a pipe for the PID-namespace holder: {e}"))?;
    // SAFETY: the shim is single-threaded here (checked at its start, before any runtime); the child makes
    // system calls, writes its report and leaves with _exit, and its own child reaps forever.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(read);
            let report = match unshare_and_fork(userns) {
                Ok(Some(pid_one)) => pid_one.to_string(),
                Ok(None) => reap_forever(write),
                Err(err) => format!("error: {err}"),
            };
            let _ = nix::unistd::write(&write, report.as_bytes());
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { nix::libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            let mut text = String::new();
            let read = std::fs::File::from(read).read_to_string(&mut text);
            let _ = waitpid(child, None);
            read.map_err(|e| format!("cannot read the PID-namespace holder's report: {e}"))?;
            let text = text.trim();
            text.parse().map_err(|_| format!("the PID-namespace holder failed: {text}"))
        }
        Err(errno) => Err(format!("cannot start the PID-namespace holder: fork: {errno}")),
    }
}

/// In the forked child: joins `userns`, unshares a PID namespace and forks its pid 1. The child gets that
/// pid 1's host pid, the pid 1 itself `None`.
fn unshare_and_fork(userns: Option<std::fs::File>) -> Result<Option<i32>, String> {
    if let Some(file) = userns {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(|errno| format!("join the pod's user namespace: setns: {errno}"))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|errno| format!("unshare(CLONE_NEWPID): {errno}"))?;
    // SAFETY: still the single-threaded forked child.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Some(child.as_raw())),
        Ok(ForkResult::Child) => Ok(None),
        Err(errno) => Err(format!("fork: {errno}")),
    }
}

/// The pid 1 of the pod's PID namespace: lets go of the report pipe and the shim's stdio, then reaps.
fn reap_forever(report: OwnedFd) -> ! {
    drop(report);
    let _ = nix::sys::prctl::set_name(c"berth-pidns");
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    // Blocked, then waited for: no handler runs, and no SIGCHLD is missed between two waits.
    let _ = signals.thread_block();
    super::detach_stdio(&[0, 1, 2]);
    loop {
        let _ = signals.wait();
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}
