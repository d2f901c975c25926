//! The streaming verbs of the `berth` CLI against a real daemon: `berth port-forward` to the web test
//! image's port 80 inside a pod's own network namespace (parallel connections, a 64 MiB download, both
//! transports), and `berth exec` without -s (stdin piped, stdout and stderr apart, the exit code passed
//! on; a remote tty with -t).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth::cri::v1::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::cri::{container_config, pull, run_container, run_pod, stop_and_remove_pod};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs, berth_bin};

/// Size of the file the web container serves for the large transfer.
const BIG: usize = 64 * 1024 * 1024;
/// Its content: this line over and over (`yes` writes it), so the test can check every byte.
const BIG_LINE: &[u8] = b"berth-streaming\n";

/// A daemon whose pods get a network namespace of their own with only loopback in it: their ports are
/// unreachable from the host except through the streaming server.
fn daemon(registry: &TestRegistry) -> (DaemonDirs, Daemon) {
    let dirs = DaemonDirs::new();
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    std::fs::write(
        dirs.cni_conf_dir().join("10-lo.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "berth-stream-lo", "plugins": [{"type": "loopback"}]}"#,
    )
    .unwrap();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    let daemon = Daemon::start_in(&dirs);
    (dirs, daemon)
}

fn pod_config(dirs: &DaemonDirs, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e-stream".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: dirs.path().join("logs").display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn berth_command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(berth_bin());
    command.args(args).env("CONTAINER_RUNTIME_ENDPOINT", format!("unix://{}", socket.display()));
    command
}

/// Kills the child on drop, so a failed assertion leaves no port-forward running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `berth port-forward POD :80` and returns it with the local port it printed.
fn start_port_forward(socket: &Path, pod: &str, transport: &str) -> (Running, u16) {
    let mut child = berth_command(socket, &["port-forward", "--transport", transport, pod, ":80"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "Forwarding from 127.0.0.1:PORT -> 80"
    let port = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("berth port-forward printed {line:?}"));
    assert!(line.trim_end().ends_with("-> 80"), "{line:?}");
    (Running(child), port)
}

/// `GET path` over HTTP/1.0 to 127.0.0.1:port; the response head and body, or `None` when the connection
/// closed without a response (the forward could not reach the pod's port yet).
fn try_http_get(port: u16, path: &str) -> Option<(String, Vec<u8>)> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    Some((head, response[split + 4..].to_vec()))
}

fn http_get(port: u16, path: &str) -> (String, Vec<u8>) {
    try_http_get(port, path).unwrap_or_else(|| panic!("GET {path} through the forward got no response"))
}

fn assert_big_file(head: &str, body: &[u8]) {
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "{head}");
    assert_eq!(body.len(), BIG, "the whole file came through");
    if let Some(at) = body.chunks(BIG_LINE.len()).position(|line| line != BIG_LINE) {
        panic!("byte {} differs from the file", at * BIG_LINE.len());
    }
}

#[tokio::test]
async fn port_forward_cli_carries_parallel_connections_and_a_large_transfer() {
    let registry = TestRegistry::get();
    let web = &registry.image("web").reference;
    let (dirs, daemon) = daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, web).await;
    let pod_config = pod_config(&dirs, "fwd-cli");
    let pod = run_pod(&mut client, &pod_config).await;
    // The web image's httpd, with a large file next to its index (written before httpd starts).
    let script = format!("yes {} | head -c {BIG} > /www/big && exec httpd -f -p 80 -h /www", "berth-streaming");
    run_container(&mut client, &pod, &pod_config, container_config("web", web, &["sh", "-c", &script])).await;

    for transport in ["spdy", "websocket"] {
        let (mut forward, port) = start_port_forward(&daemon.socket, &pod, transport);
        // httpd comes up once the file is written: wait for the index through the forward.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match try_http_get(port, "/") {
                Some((head, body)) if head.contains(" 200") => {
                    assert_eq!(body, b"berth-test-web\n", "{transport}");
                    break;
                }
                answer => assert!(Instant::now() < deadline, "{transport}: the pod's httpd never answered: {answer:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }

        // Parallel connections, each its own stream pair on the one session, with the large one among them.
        let started = Instant::now();
        let big = std::thread::spawn(move || http_get(port, "/big"));
        let small: Vec<_> = (0..8).map(|_| std::thread::spawn(move || http_get(port, "/index.html"))).collect();
        for request in small {
            let (head, body) = request.join().unwrap();
            assert!(head.contains(" 200"), "{transport}: {head}");
            assert_eq!(body, b"berth-test-web\n", "{transport}");
        }
        let (head, body) = big.join().unwrap();
        assert_big_file(&head, &body);
        eprintln!("{transport}: 64 MiB through berth port-forward in {:?}", started.elapsed());

        // Ctrl-C ends it cleanly.
        kill(Pid::from_raw(forward.0.id() as i32), Signal::SIGINT).unwrap();
        let status = forward.0.wait().unwrap();
        assert!(status.success(), "{transport}: port-forward exited with {status} after SIGINT");
    }

    // An unknown pod is the daemon's NotFound, and the command fails.
    let output = berth_command(&daemon.socket, &["port-forward", "0000", ":80"]).stdin(Stdio::null()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NotFound"), "{output:?}");

    stop_and_remove_pod(&mut client, &pod).await;
}

/// `berth exec` with `input` on its stdin.
fn berth_exec(socket: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = berth_command(socket, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    output
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {:?}\nstderr: {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn exec_cli_streams_stdin_stdout_stderr_and_the_exit_code() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = pod_config(&dirs, "exec-cli");
    let pod = run_pod(&mut client, &pod_config).await;
    let container =
        run_container(&mut client, &pod, &pod_config, container_config("sleeper", busybox, &["sleep", "100000"])).await;
    let socket = daemon.socket.as_path();

    for transport in ["spdy", "websocket"] {
        // Non-tty: stdin piped in to EOF, stdout and stderr apart, the command's exit code as ours.
        let input: Vec<u8> = (0..200_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let args = ["exec", "-i", "--transport", transport, &container, "sh", "-c", "cat; echo to-stderr >&2; exit 3"];
        let output = berth_exec(socket, &args, &input);
        assert_eq!(output.status.code(), Some(3), "{transport}: {}", describe(&output));
        assert!(output.stdout == input, "{transport}: {} bytes of stdout, want {}", output.stdout.len(), input.len());
        assert_eq!(output.stderr, b"to-stderr\n", "{transport}");

        // Without -i the command gets no stdin; success is 0.
        let output = berth_exec(socket, &["exec", "--transport", transport, &container, "echo", "hello"], b"");
        assert_eq!(output.status.code(), Some(0), "{transport}: {}", describe(&output));
        assert_eq!(output.stdout, b"hello\n", "{transport}");

        // -t: the command runs on a terminal (stdout is one; the tty turns \n into \r\n); there is no stderr.
        let script = "test -t 1 && echo on-a-tty; echo err >&2; exit 4";
        let output = berth_exec(socket, &["exec", "-t", "--transport", transport, &container, "sh", "-c", script], b"");
        assert_eq!(output.status.code(), Some(4), "{transport}: {}", describe(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "on-a-tty\r\nerr\r\n", "{transport}");
        assert_eq!(output.stderr, b"", "{transport}");

        // -it with stdin piped (not a terminal): input reaches the remote tty.
        let output =
            berth_exec(socket, &["exec", "-it", "--transport", transport, &container, "head", "-n", "1"], b"typed\n");
        assert_eq!(output.status.code(), Some(0), "{transport}: {}", describe(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("typed"), "{transport}: {}", describe(&output));
    }

    // A missing container is the daemon's NotFound.
    let output = berth_exec(socket, &["exec", "0000", "true"], b"");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NotFound"), "{}", describe(&output));

    stop_and_remove_pod(&mut client, &pod).await;
}
