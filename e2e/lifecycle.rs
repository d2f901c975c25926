//! The daemon's socket, lock and signals: stale sockets replaced, live ones refused, clean exits.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{Daemon, DaemonDirs};

#[test]
fn socket_and_directories_have_the_documented_modes() {
    let (dirs, _daemon) = Daemon::start();
    let mode = |path: std::path::PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(dirs.socket()), 0o660);
    assert_eq!(mode(dirs.state()), 0o711);
    assert_eq!(mode(dirs.root()), 0o700);
}

#[test]
fn a_stale_socket_is_replaced() {
    let dirs = DaemonDirs::new();
    dirs.write_config("");
    std::fs::create_dir_all(dirs.state()).unwrap();
    // A bound-then-dropped listener leaves the socket file with nobody listening: what a crash leaves.
    drop(std::os::unix::net::UnixListener::bind(dirs.socket()).unwrap());
    assert!(std::fs::symlink_metadata(dirs.socket()).unwrap().file_type().is_socket());
    let daemon = Daemon::start_in(&dirs);
    assert!(daemon.log_text().contains("removing the stale socket"), "{}", daemon.log_text());
}

#[test]
fn a_socket_served_by_a_live_daemon_is_refused() {
    let (dirs, daemon) = Daemon::start();
    let started = Instant::now();
    let output = dirs.serve_command().output().unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("is in use by a running daemon"), "{stderr}");
    assert!(last.contains(&dirs.socket().display().to_string()), "{stderr}");
    // The first daemon is unharmed.
    assert!(std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok());
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let (dirs, _daemon) = Daemon::start();
    let other = DaemonDirs::new();
    let config = std::fs::read_to_string(dirs.config_path())
        .unwrap()
        .replace(&dirs.socket().display().to_string(), &other.path().join("other.sock").display().to_string());
    std::fs::write(other.config_path(), config).unwrap();
    let output = other.serve_command().output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another berth daemon is running with this state directory"), "{stderr}");
    assert!(!other.path().join("other.sock").exists(), "the refused daemon left its socket behind");
}

#[test]
fn sigterm_and_sigint_exit_cleanly_and_remove_the_socket() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let (dirs, mut daemon) = Daemon::start();
        let status = daemon.stop_with(signal);
        assert!(status.success(), "{signal}: {status}\n{}", daemon.log_text());
        assert!(!dirs.socket().exists(), "{signal}: socket left behind");
        assert!(daemon.log_text().contains("berth stopped"), "{}", daemon.log_text());
        // And the directories are reusable at once.
        let mut again = Daemon::start_in(&dirs);
        assert!(again.stop_with(Signal::SIGTERM).success());
    }
}

#[test]
fn shutdown_waits_for_open_connections_only_as_long_as_the_grace() {
    let (_dirs, mut daemon) = Daemon::start();
    // A client that opened a connection and went quiet must not hold the daemon past its grace (5 s here).
    let _idle = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let started = Instant::now();
    let status = daemon.stop_with(Signal::SIGTERM);
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn json_logs_carry_one_span_per_rpc_with_method_code_and_duration() {
    let dirs = DaemonDirs::new();
    dirs.write_config("[log]\nformat = \"json\"\nlevel = \"debug\"\n");
    let mut daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    client.runtime.version(berth::cri::v1::VersionRequest::default()).await.unwrap();
    let started = Instant::now();
    assert!(daemon.stop(Signal::SIGTERM).await.success());
    // The client's idle connection is closed at once, not waited on for the grace period.
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
    let log = daemon.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
        .collect();
    let finished = lines
        .iter()
        .find(|l| l["message"] == "rpc finished" && l["span"]["method"] == "Version")
        .unwrap_or_else(|| panic!("no `rpc finished` line for Version in:\n{log}"));
    assert_eq!(finished["code"], "Ok");
    assert!(finished["elapsed_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(finished["level"], "DEBUG", "Version is read-only and logs at debug");
}

/// Forwards 127.0.0.1:<port> to `upstream`, passing the upstream's answers on slowly (16 KiB per 20 ms), so a
/// pull through it takes a while.
fn slow_proxy(upstream: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
            let (mut client_read, mut server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_read, &mut server_write);
            });
            let (mut server_read, mut client_write) = (server, client);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                while let Ok(n) = server_read.read(&mut buffer) {
                    if n == 0 || client_write.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = client_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    address
}

#[tokio::test]
async fn an_rpc_in_flight_at_sigterm_completes_before_the_daemon_exits() {
    let registry = crate::support::registry::TestRegistry::get();
    let busybox = registry.image("busybox").clone();
    let proxy = slow_proxy(registry.address.clone());
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{proxy}\"]\ninsecure = true\n"));
    let mut daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    let image = format!("{proxy}/{}:{}", busybox.repository, busybox.tag);
    let started = Instant::now();
    let pull = tokio::spawn(async move {
        let request = berth::cri::v1::PullImageRequest {
            image: Some(berth::cri::v1::ImageSpec { image, ..Default::default() }),
            ..Default::default()
        };
        client.image.pull_image(request).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pull.is_finished(), "the pull finished before SIGTERM; the proxy is not slow enough");
    let status = daemon.stop(Signal::SIGTERM).await;
    let pulled = pull.await.unwrap().expect("the in-flight pull completes");
    assert_eq!(pulled.into_inner().image_ref, busybox.config_digest);
    assert!(status.success(), "{}", daemon.log_text());
    assert!(started.elapsed() < Duration::from_secs(5), "it should not need the whole grace period");
    assert!(!dirs.socket().exists());
}
