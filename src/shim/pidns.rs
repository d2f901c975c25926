//! The PID-namespace holder of a pod that shares one PID namespace (`shareProcessNamespace`):
//! `berth __pidns`, started by the shim. It unshares a PID namespace and forks its pid 1, which only reaps
//! the orphans of the pod's containers; the first process prints that pid 1's host pid and exits, so the
//! holder is reparented to the shim (child subreaper), which kills it when the pod goes.
//!
//! In a pod with its own user namespace (`hostUsers: false`) the holder joins that namespace first (its
//! pinned file is the one argument), so the PID namespace belongs to it: the containers' root may then
//! mount /proc for it, which a PID namespace of the host's user namespace would refuse.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Entry point, dispatched from main.rs before anything else runs (the process is single-threaded).
pub fn main() -> ExitCode {
    if let Some(userns) = std::env::args_os().nth(2) {
        let joined = std::fs::File::open(&userns)
            .map_err(|e| e.to_string())
            .and_then(|file| nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| e.to_string()));
        if let Err(err) = joined {
            println!("error: join the pod's user namespace {}: {err}", std::path::Path::new(&userns).display());
            return ExitCode::FAILURE;
        }
    }
    if let Err(errno) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        println!("error: unshare(CLONE_NEWPID): {errno}");
        return ExitCode::FAILURE;
    }
    // SAFETY: single-threaded freshly exec'd process; the child runs only the reaping loop below.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            println!("{child}");
            ExitCode::SUCCESS
        }
        Ok(nix::unistd::ForkResult::Child) => reap_forever(),
        Err(errno) => {
            println!("error: fork: {errno}");
            ExitCode::FAILURE
        }
    }
}

fn reap_forever() -> ExitCode {
    let _ = nix::sys::prctl::set_name(c"berth-pidns");
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    // Blocked, then waited for: no handler runs, and no SIGCHLD is missed between two waits.
    let _ = signals.thread_block();
    // Redirect stdio away from the shim's pipe so the shim's read of our pid ends.
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

/// Starts a holder (from the shim) and returns its host pid; `userns` is the pod's pinned user namespace,
/// when it has one.
pub fn start(userns: Option<&std::path::Path>) -> Result<i32, String> {
    let output = std::process::Command::new("/proc/self/exe")
        .arg("__pidns")
        .args(userns)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the PID-namespace holder: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let text = text.trim();
    text.parse().map_err(|_| format!("the PID-namespace holder failed: {text}"))
}
