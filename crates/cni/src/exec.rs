//! Running one CNI plugin binary: lookup in the bin dirs, the `CNI_*` environment, the configuration on
//! stdin, the result or error on stdout, and a deadline after which the plugin is killed.
//!
//! The protocol is the CNI spec's "Section 3: Execution Protocol"
//! (<https://github.com/containernetworking/cni/blob/main/SPEC.md#section-3-execution-protocol>). Chaining,
//! caching and rollback are the caller's (`network.rs`); this module runs one process.
//!
//! The plugin runs in its own process group so a timeout kills whatever it started too (a hung `iptables`,
//! a shell script's `sleep`). The wait is a `poll` on a pidfd, so a fast plugin costs no polling latency and a
//! hung one is killed at the deadline to the millisecond. The daemon is multi-threaded; `std::process::Command`
//! (fork + exec, nothing between) is the only way a process is started here.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::error::{PluginError, truncate};

/// A CNI operation (the `CNI_COMMAND` values berth uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Finds the binary for plugin `plugin_type` in `bin_dirs`, first match wins (libcni's `FindInPath`).
pub fn find_plugin(bin_dirs: &[PathBuf], plugin_type: &str) -> Result<PathBuf, PluginError> {
    // A type is a file name, never a path: "../../bin/sh" in a config must not pick an arbitrary binary.
    let valid = !plugin_type.is_empty() && !plugin_type.contains('/') && plugin_type != "." && plugin_type != "..";
    if valid {
        for dir in bin_dirs {
            let candidate = dir.join(plugin_type);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(PluginError::NotFound { bin_dirs: bin_dirs.to_vec() })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Everything one invocation needs besides the binary.
pub(crate) struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// Empty when the namespace is gone (DEL after the pod's netns was removed; the spec lets plugins
    /// release what they can without it).
    pub netns: &'a str,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub cni_path: &'a str,
    pub stdin: &'a [u8],
    pub timeout: Duration,
}

/// Runs `binary` once and returns its stdout when it exits 0.
pub(crate) fn run(binary: &Path, invocation: &Invocation<'_>) -> Result<Vec<u8>, PluginError> {
    let deadline = Instant::now() + invocation.timeout;
    let mut command = std::process::Command::new(binary);
    // The daemon's environment passes through (plugins need PATH for iptables and friends), minus any
    // CNI_* variable of its own that would confuse the plugin.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("CNI_")) {
            command.env_remove(key);
        }
    }
    command
        .env("CNI_COMMAND", invocation.command.as_str())
        .env("CNI_CONTAINERID", invocation.container_id)
        .env("CNI_NETNS", invocation.netns)
        .env("CNI_IFNAME", invocation.ifname)
        .env("CNI_ARGS", invocation.cni_args)
        .env("CNI_PATH", invocation.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a timeout kills the plugin's children with it.
        .process_group(0);
    let mut child = command.spawn().map_err(|source| PluginError::Spawn { path: binary.to_owned(), source })?;
    let pid = child.id();

    let stdout = spawn_reader(child.stdout.take());
    let stderr = spawn_reader(child.stderr.take());
    // The configuration is small, but a plugin that never reads stdin must not block us: write from a thread.
    let stdin_pipe = child.stdin.take();
    let stdin_data = invocation.stdin.to_vec();
    std::thread::Builder::new()
        .name("cni-stdin".into())
        .spawn(move || {
            if let Some(mut pipe) = stdin_pipe {
                // EPIPE when the plugin exits without reading is the plugin's business, not an error here.
                let _ = pipe.write_all(&stdin_data);
            }
        })
        .map_err(|source| PluginError::Io { step: "start the stdin writer", source })?;

    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_group(pid, &mut child);
            return Err(PluginError::Timeout { timeout: invocation.timeout });
        }
        Err(source) => {
            kill_group(pid, &mut child);
            return Err(PluginError::Io { step: "wait for the plugin", source });
        }
    };
    // A child of the plugin may still hold the pipes open; the deadline bounds that too.
    let Some(stdout) = recv_until(&stdout, deadline) else {
        kill_group(pid, &mut child);
        return Err(PluginError::Timeout { timeout: invocation.timeout });
    };
    let stderr = recv_until(&stderr, deadline).and_then(Result::ok);
    let stdout = stdout.map_err(|source| PluginError::Io { step: "read stdout", source })?;
    let stderr = String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned();
    if status.success() {
        return Ok(stdout);
    }
    Err(plugin_failure(status, &stdout, stderr))
}

type Output = std::io::Result<Vec<u8>>;

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Output> {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("cni-output".into()).spawn(move || {
        let mut buffer = Vec::new();
        let result = match pipe {
            Some(mut pipe) => pipe.read_to_end(&mut buffer).map(|_| buffer),
            None => Ok(buffer),
        };
        let _ = sender.send(result);
    });
    if let Err(err) = spawned {
        let (sender, receiver) = mpsc::channel();
        let _ = sender.send(Err(err));
        return receiver;
    }
    receiver
}

fn recv_until(receiver: &mpsc::Receiver<Output>, deadline: Instant) -> Option<Output> {
    receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
}

/// Waits for `child` to exit, at most until `deadline`; `Ok(None)` means it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let pid = Pid::from_raw(child.id() as i32).ok_or_else(|| std::io::Error::other("child has pid 0"))?;
    // The child is ours and not reaped yet, so its pid cannot have been reused.
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec { tv_sec: remaining.as_secs() as i64, tv_nsec: remaining.subsec_nanos() as _ };
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
            Ok(_) => return child.wait().map(Some),
            Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Kills the plugin's process group (the plugin leads it), then reaps the plugin.
fn kill_group(pid: u32, child: &mut Child) {
    if let Some(pgid) = Pid::from_raw(pid as i32) {
        // ESRCH: the group is already gone, which is what we want.
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A non-zero exit: the spec puts a JSON error on stdout (`code`, `msg`, `details`); anything else is a crash.
fn plugin_failure(status: ExitStatus, stdout: &[u8], stderr: String) -> PluginError {
    #[derive(serde::Deserialize)]
    struct ErrorOutput {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<ErrorOutput>(stdout) {
        Ok(error) => PluginError::Failed { code: error.code, msg: error.msg, details: error.details, stderr },
        Err(_) => {
            let mut stderr = stderr;
            let stdout = String::from_utf8_lossy(stdout);
            if !stdout.trim().is_empty() {
                stderr = format!("{stderr} stdout: {}", truncate(stdout.trim(), 256));
            }
            PluginError::Crashed { status: status.to_string(), stderr }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn invocation(timeout: Duration) -> Invocation<'static> {
        Invocation {
            command: Command::Add,
            container_id: "c1",
            netns: "/run/netns/x",
            ifname: "eth0",
            cni_args: "IgnoreUnknown=1",
            cni_path: "/nowhere",
            stdin: b"{\"hello\":1}",
            timeout,
        }
    }

    #[test]
    fn a_plugin_sees_the_cni_environment_and_its_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "echoer",
            "printf '%s|%s|%s|%s|%s|%s|' \"$CNI_COMMAND\" \"$CNI_CONTAINERID\" \"$CNI_NETNS\" \"$CNI_IFNAME\" \
             \"$CNI_ARGS\" \"$CNI_PATH\"; cat",
        );
        let out = run(&plugin, &invocation(Duration::from_secs(10))).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ADD|c1|/run/netns/x|eth0|IgnoreUnknown=1|/nowhere|{\"hello\":1}");
    }

    #[test]
    fn a_hung_plugin_and_its_children_are_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child.pid");
        let plugin = script(dir.path(), "hang", &format!("sleep 300 & echo $! > {}; wait", marker.display()));
        let started = Instant::now();
        let err = run(&plugin, &invocation(Duration::from_millis(500))).unwrap_err();
        let elapsed = started.elapsed();
        assert!(matches!(err, PluginError::Timeout { .. }), "{err:?}");
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        let child: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        // The grandchild (sleep) died with the group: give the kernel a moment to reap it via init.
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::fs::read_to_string(format!("/proc/{child}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
        });
        assert!(gone, "sleep {child} survived the timeout");
    }

    #[test]
    fn a_cni_error_is_parsed_and_a_crash_is_reported_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let failing = script(
            dir.path(),
            "failing",
            "echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"bad thing\",\"details\":\"more\"}'; exit 1",
        );
        let err = run(&failing, &invocation(Duration::from_secs(10))).unwrap_err();
        assert_eq!(err.to_string(), "failed with CNI error code 7: bad thing (more)");

        let crashing = script(dir.path(), "crashing", "echo oops >&2; kill -SEGV $$");
        let err = run(&crashing, &invocation(Duration::from_secs(10))).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, PluginError::Crashed { .. }), "{err:?}");
        assert!(message.contains("signal: 11") && message.contains("stderr: oops"), "{message}");
    }

    #[test]
    fn lookup_honours_dir_order_and_refuses_paths() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let in_second = script(second.path(), "p", "true");
        std::fs::write(first.path().join("p"), "not executable").unwrap();
        let dirs = vec![first.path().to_owned(), second.path().to_owned()];
        assert_eq!(find_plugin(&dirs, "p").unwrap(), in_second);
        let in_first = script(first.path(), "p", "true");
        assert_eq!(find_plugin(&dirs, "p").unwrap(), in_first);
        assert!(matches!(find_plugin(&dirs, "../p"), Err(PluginError::NotFound { .. })));
        assert!(matches!(find_plugin(&dirs, "absent"), Err(PluginError::NotFound { .. })));
    }
}
