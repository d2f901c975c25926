//! A network namespace a test owns, for daemons whose pods get real CNI networking.
//!
//! The namespace is held by a `sleep` process started with `unshare --net` (loopback up), and a daemon is
//! started inside it with `nsenter --net`, which execs the daemon in place. Unlike
//! [`Daemon::start_in_own_netns`], the namespace outlives the daemon: a test can kill -9 its daemon and start
//! another on the same bridge, leases and iptables rules. Bridges, veths and rules made in it never touch
//! the host's network, and vanish with it when the holder, the daemon and the shims are gone (the holder
//! is killed on drop, after [`DaemonDirs`] has killed the shims when the test declared it first).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use berth::cri::v1::{ImageSpec, PullImageRequest};
use nix::sys::signal::Signal;

use super::registry::KillOnDrop;
use super::{Daemon, DaemonDirs, require_tool};

pub struct TestNetns {
    holder: KillOnDrop,
}

impl TestNetns {
    pub fn new() -> TestNetns {
        require_tool("unshare");
        require_tool("nsenter");
        require_tool("ip");
        let mut child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c", "ip link set lo up && echo ready && exec sleep 100000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare --net");
        let stdout = child.stdout.take().unwrap();
        let holder = KillOnDrop(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the namespace holder did not start");
        TestNetns { holder }
    }

    /// `/proc/<holder>/ns/net`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.0.id()))
    }

    /// `program args...` run inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.path().display())).arg("--").arg(program).args(args);
        command
    }

    /// Runs `program args...` inside the namespace and returns its stdout; panics when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let output = super::output_via_files(&mut self.command(program, args));
        assert!(
            output.status.success(),
            "{program} {args:?} in the test netns: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every link in the namespace, one per line (`ip -o link`).
    pub fn links(&self) -> String {
        self.run("ip", &["-o", "link"])
    }

    /// The namespace's iptables rules (`iptables-save`).
    pub fn iptables(&self) -> String {
        self.run("iptables-save", &[])
    }

    /// Starts a daemon on `dirs` (config already written) inside the namespace.
    pub fn start_daemon(&self, dirs: &DaemonDirs) -> Daemon {
        self.start_daemon_with_env(dirs, &[])
    }

    /// [`TestNetns::start_daemon`] with more environment (the fault tests' `BERTH_CRASH_AT`).
    pub fn start_daemon_with_env(&self, dirs: &DaemonDirs, env: &[(&str, &str)]) -> Daemon {
        let serve = dirs.serve_command();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(serve.get_program())
            .args(serve.get_args())
            .env_remove("BERTH_LOG")
            .envs(env.iter().copied());
        Daemon::spawn_command(dirs, command)
    }

    /// A daemon in the namespace with `images` already pulled. The namespace cannot reach the test registry
    /// on the host's loopback, so a daemon in the host's network pulls them first into the same root, and
    /// stops (SIGTERM) before the one in the namespace starts on the same directories.
    pub async fn start_daemon_with_images(&self, dirs: &DaemonDirs, images: &[&str]) -> Daemon {
        let mut puller = Daemon::start_in(dirs);
        let mut client = puller.client().await;
        for image in images {
            client
                .image
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec { image: (*image).into(), ..Default::default() }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("pull {image}: {e}"));
        }
        drop(client);
        let status = puller.stop(Signal::SIGTERM).await;
        assert!(status.success(), "the pulling daemon exited with {status}:\n{}", puller.log_text());
        self.start_daemon(dirs)
    }
}
