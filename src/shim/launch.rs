//! Starting a shim: the daemon's side ([`start`], plain `std::process::Command`, nothing between fork and
//! exec) and the shim's first steps ([`detach_and_run`], in the freshly exec'd, still single-threaded
//! process).
//!
//! The shim's cgroup (cgroupfs: `/berth/shim-<pod>` in every hierarchy) is made by the daemon while the shim
//! execs, and the shim's first process is moved into it before it may fork: on cgroup v1 that is a mkdir and
//! a `cgroup.procs` write in each of about ten hierarchies, 2-3 ms, which used to be the longest stretch of
//! the shim's start, after its exec instead of beside it. The first process waits for one line on its stdin:
//! `placed` (the daemon moved it), or `enter` (it enters the cgroup itself: a systemd scope, which systemd
//! starts with the process that asks). End of file before the line means the daemon gave up on it.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use berth_error_kind::{ErrorKind, Kinded};

use super::Bootstrap;
use super::service::{self, Options};

/// How long a new shim may take to serve before the pod fails to start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("pod {pod}: cannot {step}")]
    Io {
        pod: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: the shim failed to start: {message}")]
    Failed { pod: String, message: String, errno: Option<i32> },
}

impl Kinded for LaunchError {
    fn kind(&self) -> ErrorKind {
        match self {
            LaunchError::Io { source, .. } => ErrorKind::of_own_io(source),
            LaunchError::Failed { errno: Some(errno), .. } => {
                ErrorKind::of_own_io(&std::io::Error::from_raw_os_error(*errno))
            }
            LaunchError::Failed { errno: None, .. } => ErrorKind::Internal,
        }
    }
}

/// Why a shim could not start, as it reports it to the daemon on its stdout: `error: <message>`, or
/// `error: [errno N] <message>` when an I/O error of its own is the cause (a full disk is then
/// ResourceExhausted, which kubelet retries, not an internal failure).
#[derive(Debug)]
pub struct StartFailure {
    pub message: String,
    pub errno: Option<i32>,
}

impl From<String> for StartFailure {
    fn from(message: String) -> StartFailure {
        StartFailure { message, errno: None }
    }
}

impl StartFailure {
    pub fn io(message: String, err: &std::io::Error) -> StartFailure {
        StartFailure { message: format!("{message}: {err}"), errno: err.raw_os_error() }
    }

    fn report_line(&self) -> String {
        match self.errno {
            Some(errno) => format!("error: [errno {errno}] {}", self.message),
            None => format!("error: {}", self.message),
        }
    }

    fn parse(report: &str) -> StartFailure {
        let message = report.strip_prefix("error: ").unwrap_or(report);
        let errno = message.strip_prefix("[errno ").and_then(|rest| rest.split_once("] "));
        match errno.and_then(|(number, message)| Some((number.parse().ok()?, message))) {
            Some((errno, message)) => StartFailure { message: message.to_owned(), errno: Some(errno) },
            None => StartFailure { message: message.to_owned(), errno: None },
        }
    }
}

/// A shim on its way up: the daemon can do other work for the pod (namespaces, CNI) meanwhile.
#[derive(Debug)]
pub struct Launching {
    pod_id: String,
    pod_dir: std::path::PathBuf,
    child: std::process::Child,
}

/// Starts the shim of a pod; [`Launching::wait_ready`] waits until it serves.
pub fn start(
    binary: &Path,
    pod_id: &str,
    pod_dir: &Path,
    runtime_root: &Path,
    pid_namespace: bool,
    systemd_cgroup: bool,
) -> Result<Launching, LaunchError> {
    let io = |step| {
        let pod = pod_id.to_owned();
        move |source| LaunchError::Io { pod, step, source }
    };
    std::fs::create_dir_all(pod_dir).map_err(io("create the pod directory"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod_dir.join("shim.log"))
        .map_err(io("open the shim's log file"))?;
    let mut command = Command::new(binary);
    // `ps` shows which pod a shim serves.
    command.arg0(format!("berth-shim:{}", &pod_id[..pod_id.len().min(12)]));
    command.arg("__shim").arg(pod_id).arg(pod_dir).arg(runtime_root);
    if pid_namespace {
        command.arg("--pid-namespace");
    }
    if systemd_cgroup {
        command.arg("--systemd-cgroup");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(io("start the shim"))?;
    let mut placement = child.stdin.take().expect("stdin is piped");
    let placed = if systemd_cgroup { Ok(ENTER) } else { place(pod_id, child.id() as i32).map(|()| PLACED) };
    let told = placed.and_then(|line| placement.write_all(line).map_err(io("tell the shim where it runs")));
    drop(placement);
    if let Err(err) = told {
        // It exits at the end of file; reaped here so no zombie stays behind.
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    Ok(Launching { pod_id: pod_id.to_owned(), pod_dir: pod_dir.to_owned(), child })
}

/// The first process's stdin line: the daemon moved it into the shim's cgroup.
const PLACED: &[u8] = b"placed\n";
/// The first process's stdin line: it enters the shim's cgroup itself.
const ENTER: &[u8] = b"enter\n";

/// Makes the shim's cgroup (cgroupfs) and moves the shim's first process into it.
fn place(pod_id: &str, pid: i32) -> Result<(), LaunchError> {
    super::enter_cgroup(pod_id, false, pid).map_err(|err| LaunchError::Failed {
        pod: pod_id.to_owned(),
        message: format!("cannot put the shim in its cgroup: {}", berth_error_kind::chain(&err)),
        errno: None,
    })
}

/// The shim's side of [`place`]: whether the daemon put this process in its cgroup (else it enters it
/// itself). Reads the one line byte by byte, so nothing after it is consumed, then points stdin at
/// /dev/null.
fn read_placement() -> Result<bool, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(std::io::stdin(), &mut byte) {
            Ok(0) => return Err("the daemon closed the shim's stdin before saying where it runs".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 16 => line.push(byte[0]),
            Ok(_) => return Err("the daemon's placement line is too long".into()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(format!("read the daemon's placement line: {errno}")),
        }
    }
    super::detach_stdio(&[0]);
    match line.as_slice() {
        b"placed" => Ok(true),
        b"enter" => Ok(false),
        other => Err(format!("unknown placement line {:?}", String::from_utf8_lossy(other))),
    }
}

impl Launching {
    /// Waits until the shim serves (or failed), and returns how to reach it.
    pub fn wait_ready(mut self) -> Result<Bootstrap, LaunchError> {
        let pod_id = self.pod_id.as_str();
        let pod_dir = self.pod_dir.as_path();
        let io = |step| {
            let pod = pod_id.to_owned();
            move |source| LaunchError::Io { pod, step, source }
        };
        let failed = |message: String| LaunchError::Failed { pod: pod_id.to_owned(), message, errno: None };
        let stdout = self.child.stdout.take().expect("stdout is piped");
        // The first process only detaches and exits; the shim proper is its child and reports on the pipe.
        let status = self.child.wait().map_err(io("wait for the shim to detach"))?;
        if !status.success() {
            return Err(failed(format!(
                "the shim exited with {status} before detaching (see {}/shim.log)",
                pod_dir.display()
            )));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut poll = [nix::poll::PollFd::new(stdout.as_fd(), nix::poll::PollFlags::POLLIN)];
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ready = nix::poll::poll(
            &mut poll,
            nix::poll::PollTimeout::try_from(remaining).unwrap_or(nix::poll::PollTimeout::MAX),
        )
        .map_err(|e| io("wait for the shim")(e.into()))?;
        if ready == 0 {
            return Err(failed(format!(
                "no answer within {} s (see {}/shim.log)",
                READY_TIMEOUT.as_secs(),
                pod_dir.display()
            )));
        }
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(io("read the shim's report"))?;
        match line.trim_end() {
            "ready" => Bootstrap::load(pod_dir).map_err(io("read the shim's bootstrap file")),
            "" => Err(failed(format!("the shim exited before serving (see {}/shim.log)", pod_dir.display()))),
            report => {
                let StartFailure { message, errno } = StartFailure::parse(report);
                Err(LaunchError::Failed { pod: pod_id.to_owned(), message, errno })
            }
        }
    }
}

/// The shim's first steps, before any thread exists: detach from the daemon, enter its own cgroup,
/// become child subreaper; then serve on a single-threaded runtime until told to shut down.
pub fn detach_and_run(options: Options) -> ExitCode {
    let report = |message: &str| println!("{}", StartFailure::from(message.to_owned()).report_line());
    if let Err(err) = berth_runtime::init::ensure_single_threaded() {
        report(&format!("the shim must start single-threaded: {err}"));
        return ExitCode::FAILURE;
    }
    let placed = match read_placement() {
        Ok(placed) => placed,
        Err(message) => {
            report(&message);
            return ExitCode::FAILURE;
        }
    };
    if let Err(errno) = nix::unistd::setsid() {
        report(&format!("setsid: {errno}"));
        return ExitCode::FAILURE;
    }
    // SAFETY: this process was just exec'd and has one thread (checked above), so the child may run any
    // code; the parent only exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return ExitCode::SUCCESS,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(errno) => {
            report(&format!("fork: {errno}"));
            return ExitCode::FAILURE;
        }
    }
    if !placed && let Err(err) = super::enter_cgroup(&options.pod_id, options.systemd_cgroup, std::process::id() as i32)
    {
        report(&format!("cannot enter the shim's cgroup: {}", berth_error_kind::chain(&err)));
        return ExitCode::FAILURE;
    }
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        report(&format!("cannot become child subreaper: {errno}"));
        return ExitCode::FAILURE;
    }
    // Before the runtime and its threads: the holder is forked without an exec.
    let holder = if options.pid_namespace {
        // A pod with its own user namespace has it pinned before its shim starts (see pods::make).
        let userns = options.pod_dir.join("ns").join(berth_runtime::pin::USER_NAMESPACE_FILE);
        match super::pidns::start(userns.exists().then_some(userns.as_path())) {
            Ok(pid) => pid,
            Err(err) => {
                report(&err);
                return ExitCode::FAILURE;
            }
        }
    } else {
        0
    };
    let _ = nix::sys::prctl::set_name(c"berth-shim");
    crate::logging::init_shim();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            report(&format!("cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(options, holder)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Before "ready" this reaches the daemon; after it, the shim's log.
            println!("{}", failure.report_line());
            tracing::error!(error = %failure.message, "shim failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_in_the_shim_reaches_the_daemon_as_resource_exhausted() {
        let err = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        let line = StartFailure::io("cannot write /state/pods/p/shim.json".into(), &err).report_line();
        let StartFailure { message, errno } = StartFailure::parse(&line);
        assert_eq!(message, format!("cannot write /state/pods/p/shim.json: {err}"));
        let failed = LaunchError::Failed { pod: "p".into(), message, errno };
        assert_eq!(failed.kind(), ErrorKind::ResourceExhausted);
        assert!(failed.to_string().contains("No space left on device"), "{failed}");

        // Reports without an errno (and text that only looks like one) stay internal failures.
        for line in ["error: setsid: EPERM", "error: [errno x] odd", "error: [errno 28]"] {
            let StartFailure { message, errno } = StartFailure::parse(line);
            assert_eq!(errno, None, "{line}");
            let failed = LaunchError::Failed { pod: "p".into(), message, errno };
            assert_eq!(failed.kind(), ErrorKind::Internal, "{line}");
        }
    }
}
