//! The `berth` client verbs against a real daemon, as an operator runs them.

use std::process::Command;

use crate::support::{Daemon, berth_bin};

fn berth(args: &[&str], endpoint: &std::path::Path) -> std::process::Output {
    Command::new(berth_bin())
        .args(args)
        .env("CONTAINER_RUNTIME_ENDPOINT", format!("unix://{}", endpoint.display()))
        .output()
        .unwrap()
}

#[test]
fn version_prints_a_table_json_and_yaml() {
    let (_dirs, daemon) = Daemon::start();
    let table = berth(&["version"], &daemon.socket);
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("RuntimeName:        berth"), "{table}");
    assert!(table.contains("RuntimeApiVersion:  v1"), "{table}");

    let json: serde_json::Value =
        serde_json::from_slice(&berth(&["version", "-o", "json"], &daemon.socket).stdout).unwrap();
    assert_eq!(json["runtimeName"], "berth");
    assert!(json["runtimeVersion"].as_str().unwrap().starts_with(env!("CARGO_PKG_VERSION")));

    let yaml = String::from_utf8(berth(&["version", "-o", "yaml"], &daemon.socket).stdout).unwrap();
    assert!(yaml.contains("runtimeName: berth"), "{yaml}");
}

#[test]
fn info_shows_conditions_and_the_endpoint_flag_beats_the_environment() {
    let (dirs, daemon) = Daemon::start();
    let output = Command::new(berth_bin())
        .args(["info", "-o", "json", "--runtime-endpoint"])
        .arg(format!("unix://{}", daemon.socket.display()))
        .env("CONTAINER_RUNTIME_ENDPOINT", "unix:///nonexistent.sock")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["conditions"][0]["type"], "RuntimeReady");
    assert_eq!(info["conditions"][1]["reason"], "NetworkPluginNotReady");
    assert_eq!(info["info"]["config"]["daemon"]["root"], dirs.root().display().to_string());

    let table = String::from_utf8(berth(&["info"], &daemon.socket).stdout).unwrap();
    assert!(table.lines().next().unwrap().starts_with("CONDITION"), "{table}");
    assert!(table.contains("(default)"), "{table}");

    let fs = String::from_utf8(berth(&["imagefsinfo"], &daemon.socket).stdout).unwrap();
    assert!(fs.contains(&dirs.root().join("images").display().to_string()), "{fs}");
}

#[test]
fn an_absent_daemon_is_one_clear_line() {
    let output = berth(&["version"], std::path::Path::new("/nonexistent/berth.sock"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the runtime at unix:///nonexistent/berth.sock (is `berth serve` running?)"),
        "{stderr}"
    );

    let output = berth(&["version", "--runtime-endpoint", "tcp://127.0.0.1:1"], std::path::Path::new("/x"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unsupported runtime endpoint"));
}
