//! A `berth serve` process on a private temporary root, state directory and socket.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The directories one daemon uses; kept separate from [`Daemon`] so a test can restart on the same ones.
pub struct DaemonDirs {
    pub temp: tempfile::TempDir,
}

impl DaemonDirs {
    pub fn new() -> DaemonDirs {
        DaemonDirs { temp: tempfile::Builder::new().prefix("berth-e2e.").tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.state().join("berth.sock")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.path().join("cni")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.toml")
    }

    /// Kills whatever a test left running under these directories (shims outlive the daemon by design),
    /// removes their containers' cgroups and unmounts everything below the temporary directory, so a failed
    /// test leaves nothing on the host.
    fn clean_up_leftovers(&self) {
        let runtime = berth_runtime::Runtime::new(self.state().join("runtime"));
        for id in runtime.list().unwrap_or_default() {
            let _ = runtime.delete(&id, true);
        }
        if let Ok(pods) = std::fs::read_dir(self.state().join("pods")) {
            for pod in pods.flatten() {
                let pod_id = pod.file_name().to_string_lossy().into_owned();
                // Deleting the cgroup kills what is left in it first.
                if let Ok(cgroup) = berth::shim::cgroup(&pod_id, false) {
                    let _ = cgroup.delete();
                }
            }
        }
        let prefix = self.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut targets: Vec<String> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_owned))
            .filter(|target| target.starts_with(&prefix))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for target in targets {
            let _ = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Writes the config file: the private directories, then `extra` TOML (whole tables, so it must not
    /// repeat `[daemon]` or `[cni]`).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        self.write_config_with_cni("", extra)
    }

    /// [`DaemonDirs::write_config`] with more keys of the `[cni]` table (e.g. `bin_dirs = [...]`).
    pub fn write_config_with_cni(&self, cni_keys: &str, extra: &str) -> PathBuf {
        let text = format!(
            "[daemon]\nroot = {root:?}\nstate = {state:?}\nsocket = {socket:?}\nshutdown_grace_seconds = 5\n\n\
             [cni]\nconf_dir = {cni:?}\n{cni_keys}\n{extra}",
            root = self.root(),
            state = self.state(),
            socket = self.socket(),
            cni = self.cni_conf_dir(),
        );
        std::fs::write(self.config_path(), text).expect("write config");
        self.config_path()
    }

    /// `berth serve --config <this config>` as a command, for tests that watch it fail.
    pub fn serve_command(&self) -> Command {
        let mut command = Command::new(super::berth_bin());
        command.arg("serve").arg("--config").arg(self.config_path()).env_remove("BERTH_LOG");
        command
    }
}

impl Drop for DaemonDirs {
    fn drop(&mut self) {
        self.clean_up_leftovers();
    }
}

/// A running daemon. Dropping it kills the process (SIGKILL) so a failed test never leaves one behind.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with a default config on fresh directories.
    pub fn start() -> (DaemonDirs, Daemon) {
        let dirs = DaemonDirs::new();
        dirs.write_config("");
        let daemon = Daemon::start_in(&dirs);
        (dirs, daemon)
    }

    /// Starts a daemon on `dirs` with the config already written there, and waits until it answers.
    pub fn start_in(dirs: &DaemonDirs) -> Daemon {
        Daemon::spawn(dirs, false)
    }

    /// Like [`Daemon::start_in`], but in a network namespace of its own (`unshare --net`, which execs the
    /// daemon in place, so the pid is the daemon's): CNI bridges, veths and iptables rules the test makes
    /// never touch the host's network, and vanish with the daemon.
    pub fn start_in_own_netns(dirs: &DaemonDirs) -> Daemon {
        Daemon::spawn(dirs, true)
    }

    fn spawn(dirs: &DaemonDirs, own_netns: bool) -> Daemon {
        let mut command = dirs.serve_command();
        if own_netns {
            super::require_tool("unshare");
            let serve = command;
            command = Command::new("unshare");
            command.arg("--net").arg("--").arg(serve.get_program()).args(serve.get_args()).env_remove("BERTH_LOG");
        }
        Daemon::spawn_command(dirs, command)
    }

    /// Starts `command` (which must exec `berth serve` on `dirs` in place, so its pid is the daemon's) with
    /// its output in a log file under `dirs`, and waits until it answers.
    pub fn spawn_command(dirs: &DaemonDirs, mut command: Command) -> Daemon {
        // A fresh name per start: a restarted daemon's log does not overwrite its predecessor's.
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let log = dirs.path().join(format!("daemon-{started}.log"));
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn berth serve");
        let mut daemon = Daemon { child, socket: dirs.socket(), log };
        daemon.wait_until_serving();
        daemon
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("berth serve exited early ({status}):\n{}", self.log_text());
            }
            let is_socket = std::fs::symlink_metadata(&self.socket).map(|m| m.file_type().is_socket()).unwrap_or(false);
            if is_socket && std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "berth serve did not open its socket in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A CRI client over the daemon's socket.
    pub async fn client(&self) -> Client {
        Client::connect(Endpoint { path: self.socket.clone() }, Duration::from_secs(10)).await.expect("connect")
    }

    /// [`Daemon::stop_with`] for async tests: it waits without blocking the test's runtime, so the test's
    /// own gRPC connections keep running and can answer the daemon's shutdown.
    pub async fn stop(&mut self, signal: Signal) -> ExitStatus {
        kill(self.pid(), signal).expect("signal the daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit after {signal}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` and waits (up to 20 s) for the process to exit.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        kill(self.pid(), signal).expect("signal the daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit after {signal}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
