//! OCI hooks (config.md, "POSIX-platform Hooks"): programs run at fixed points of the lifecycle, given the
//! container's state on standard input, each with its own timeout.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Result, RuntimeError};

/// Runs `hooks` in order; the first failure stops the rest and is returned.
pub fn run(stage: &'static str, hooks: &[Hook], state: &serde_json::Value) -> Result<()> {
    for hook in hooks {
        run_one(stage, hook, state)?;
    }
    Ok(())
}

fn run_one(stage: &'static str, hook: &Hook, state: &serde_json::Value) -> Result<()> {
    let path = hook.path().clone();
    let failed = |reason: String| RuntimeError::Hook { hook: stage, path: path.clone(), reason };
    let mut command = Command::new(&path);
    if let Some(args) = hook.args() {
        if let Some(argv0) = args.first() {
            command.arg0(argv0);
        }
        command.args(args.iter().skip(1));
    }
    command.env_clear();
    for variable in hook.env().iter().flatten() {
        if let Some((key, value)) = variable.split_once('=') {
            command.env(key, value);
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| failed(format!("could not start: {err}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is fine; ignore EPIPE.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let deadline = hook.timeout().map(|seconds| Instant::now() + Duration::from_secs(seconds.max(1) as u64));
    loop {
        if let Some(status) = child.try_wait().map_err(|err| failed(format!("wait: {err}")))? {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(failed(format!("failed ({status}): {}", stderr.trim())));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("timed out after {} s", hook.timeout().unwrap_or_default())));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
