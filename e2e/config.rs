//! Bad input at start: every case is one clear line, a non-zero exit, no panic, and nothing half made.

use std::process::Output;

use crate::support::{DaemonDirs, berth_bin};

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or_default().to_owned()
}

fn assert_clean_failure(output: &Output, want: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(last_line(output).contains(want), "want {want:?} in:\n{stderr}");
}

#[test]
fn a_malformed_config_names_file_line_and_key_and_creates_nothing() {
    let dirs = DaemonDirs::new();
    dirs.write_config("[log]\nlevel = \"chatty\"\n");
    let output = dirs.serve_command().output().unwrap();
    let config = dirs.config_path().display().to_string();
    assert_clean_failure(&output, &format!("config file {config}:"));
    assert_clean_failure(&output, "log.level: unknown variant `chatty`, expected one of");
    assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1);
    assert!(!dirs.root().exists() && !dirs.state().exists(), "directories created for a config that failed");

    dirs.write_config("[daemon.extra]\n");
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(&output, ":10: daemon.extra: unknown field `extra`");

    std::fs::write(dirs.config_path(), "[log]\nlevel = \"info\n").unwrap();
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(&output, ":2: log.level: invalid basic string");

    std::fs::write(dirs.config_path(), "[daemon]\nroot = \"/x\"\nstat = \"/y\"\n").unwrap();
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(&output, ":3: daemon.stat: unknown field `stat`, expected one of `root`, `state`");
}

#[test]
fn an_explicit_config_file_must_exist() {
    let output = std::process::Command::new(berth_bin())
        .args(["serve", "--config", "/nonexistent/berth.toml"])
        .output()
        .unwrap();
    assert_clean_failure(&output, "cannot read config file /nonexistent/berth.toml: No such file or directory");
}

#[test]
fn an_unusable_root_directory_is_named() {
    let dirs = DaemonDirs::new();
    let blocker = dirs.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let config = dirs.write_config("");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("root = {:?}", dirs.root()), &format!("root = {:?}", blocker.join("root")));
    std::fs::write(&config, text).unwrap();
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(&output, &format!("cannot create daemon.root directory {}/root", blocker.display()));
    assert!(!dirs.socket().exists());
}

#[test]
fn a_corrupt_database_stops_the_daemon_and_is_left_untouched() {
    let dirs = DaemonDirs::new();
    dirs.write_config("");
    std::fs::create_dir_all(dirs.root()).unwrap();
    let database = dirs.root().join("berth.redb");
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&database, &garbage).unwrap();
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(&output, &format!("state database {} is damaged or not a berth database", database.display()));
    assert_eq!(std::fs::read(&database).unwrap(), garbage, "the database file was modified");
    assert!(!dirs.socket().exists(), "socket left behind by a daemon that refused to start");
    let leftovers: Vec<_> = std::fs::read_dir(dirs.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only berth.redb and images/ expected: {leftovers:?}");
}

#[test]
fn the_default_config_is_complete_and_checks_clean() {
    let output = std::process::Command::new(berth_bin()).args(["config", "default"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for key in
        ["root =", "state =", "socket =", "level =", "format =", "driver =", "conf_dir =", "bin_dirs =", "address ="]
    {
        assert!(text.contains(key), "{key} missing from berth config default");
    }
    let dirs = DaemonDirs::new();
    std::fs::write(dirs.config_path(), &text).unwrap();
    let checked =
        std::process::Command::new(berth_bin()).arg("config").arg("check").arg(dirs.config_path()).output().unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let effective: toml::Value = toml::from_str(&String::from_utf8(checked.stdout).unwrap()).unwrap();
    assert_eq!(effective["daemon"]["socket"].as_str(), Some("/run/berth/berth.sock"));
    assert_eq!(effective["cgroup"]["driver"].as_str(), Some("cgroupfs"));
}

/// The config `write_config` writes, with more keys in its `[daemon]` table.
fn with_daemon_keys(dirs: &DaemonDirs, keys: &str) {
    let config = dirs.write_config("");
    let text = std::fs::read_to_string(&config).unwrap().replacen("[daemon]\n", &format!("[daemon]\n{keys}\n"), 1);
    std::fs::write(&config, text).unwrap();
}

#[test]
fn a_socket_directory_every_user_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = DaemonDirs::new();
    let open = dirs.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("berth.sock");
    with_daemon_keys(&dirs, "");
    let config = dirs.config_path();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("socket = {:?}", dirs.socket()), &format!("socket = {socket:?}"));
    std::fs::write(&config, text).unwrap();
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(
        &output,
        &format!("the socket's directory {} (mode 0777) may be written by every user", open.display()),
    );
    assert!(!socket.exists(), "no socket is bound in such a directory");
}

#[test]
fn the_socket_gets_the_configured_owner_group_and_mode() {
    use std::os::unix::fs::MetadataExt;
    let dirs = DaemonDirs::new();
    with_daemon_keys(&dirs, "socket_owner = \"nobody\"\nsocket_group = \"65534\"\nsocket_mode = \"0640\"");
    let daemon = crate::support::Daemon::start_in(&dirs);
    let meta = std::fs::metadata(dirs.socket()).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (65534, 65534, 0o640));
    drop(daemon);

    let dirs = DaemonDirs::new();
    with_daemon_keys(&dirs, "socket_group = \"no-such-group-here\"");
    let output = dirs.serve_command().output().unwrap();
    assert_clean_failure(&output, "daemon.socket_group \"no-such-group-here\": no such group on this node");
    assert!(!dirs.socket().exists());
}
