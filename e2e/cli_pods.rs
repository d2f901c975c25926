//! The pod and container verbs of the `berth` CLI against a real daemon, as an operator runs them with
//! crictl's config files: runp → create → start → ps → logs → exec -s → stop → rm → stopp → rmp, and run
//! (pod and container in one) with logs -f.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs, berth_bin};

fn berth(socket: &Path, args: &[&str]) -> Output {
    Command::new(berth_bin())
        .args(args)
        .env("CONTAINER_RUNTIME_ENDPOINT", format!("unix://{}", socket.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a verb that must succeed and returns its stdout.
fn berth_ok(socket: &Path, args: &[&str]) -> String {
    let output = berth(socket, args);
    assert!(
        output.status.success(),
        "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let text = berth_ok(socket, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("berth {args:?} printed no JSON ({e}): {text}"))
}

/// A daemon with the test registry allowed over plain HTTP. It shares the host's network to reach the
/// registry, so pods get either the node's network or, with `loopback_cni`, a network of their own with only
/// loopback in it (CNI's loopback plugin): nothing the tests do touches the host's interfaces.
fn daemon(registry: &TestRegistry, loopback_cni: bool) -> (DaemonDirs, Daemon) {
    let dirs = DaemonDirs::new();
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    if loopback_cni {
        std::fs::write(
            dirs.cni_conf_dir().join("10-lo.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "berth-cli-lo", "plugins": [{"type": "loopback"}]}"#,
        )
        .unwrap();
    }
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    let daemon = Daemon::start_in(&dirs);
    (dirs, daemon)
}

/// Waits (up to 20 s) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_and_its_container_live_and_die_through_the_cli_with_json_configs() {
    let registry = TestRegistry::get();
    let image = &registry.image("busybox").reference;
    let (dirs, daemon) = daemon(&registry, true);
    let socket = daemon.socket.as_path();
    let logs = dirs.path().join("pod-logs");

    let pod_config = dirs.path().join("pod-config.json");
    std::fs::write(
        &pod_config,
        serde_json::json!({
            "metadata": {"name": "cli-web", "namespace": "cli-ns", "uid": "cli-web-uid", "attempt": 0},
            "hostname": "cli-web-host",
            "log_directory": logs,
            "labels": {"app": "cli-web"},
            "linux": {"security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}}
        })
        .to_string(),
    )
    .unwrap();
    let container_config = dirs.path().join("container-config.json");
    std::fs::write(
        &container_config,
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": image},
            "command": ["sh", "-c"],
            "args": ["echo hello-$GREETING; echo oops >&2; exec sleep 3600"],
            "envs": [{"key": "GREETING", "value": "out"}],
            "log_path": "main.log",
            "labels": {"role": "main"}
        })
        .to_string(),
    )
    .unwrap();

    // runp prints the new pod's ID; pods lists it and filters.
    let pod = berth_ok(socket, &["runp", pod_config.to_str().unwrap()]).trim().to_owned();
    assert_eq!(pod.len(), 64, "{pod}");
    assert_eq!(berth_ok(socket, &["pods", "-q"]).trim(), pod);
    assert_eq!(berth_ok(socket, &["pods", "-q", "--name", "^cli-w", "--namespace", "cli-ns"]).trim(), pod);
    assert_eq!(berth_ok(socket, &["pods", "-q", "--label", "app=cli-web", "--state", "ready"]).trim(), pod);
    assert_eq!(berth_ok(socket, &["pods", "-q", "--id", &pod[..12]]).trim(), pod);
    assert_eq!(berth_ok(socket, &["pods", "-q", "--label", "app=other"]).trim(), "");
    assert_eq!(berth_ok(socket, &["pods", "-q", "--state", "notready"]).trim(), "");
    let table = berth_ok(socket, &["pods"]);
    assert!(table.starts_with("POD ID"), "{table}");
    assert!(table.contains(&pod[..13]) && table.contains("Ready") && table.contains("cli-ns"), "{table}");
    let listed = json(socket, &["pods", "-o", "json"]);
    assert_eq!(listed["items"][0]["id"], pod.as_str());
    assert_eq!(listed["items"][0]["state"], "SANDBOX_READY");
    assert_eq!(listed["items"][0]["metadata"]["name"], "cli-web");
    let yaml = berth_ok(socket, &["pods", "-o", "yaml"]);
    assert!(yaml.contains("state: SANDBOX_READY"), "{yaml}");
    let inspected = json(socket, &["inspectp", &pod[..12]]);
    assert_eq!(inspected["status"]["id"], pod.as_str());
    assert_eq!(inspected["status"]["metadata"]["namespace"], "cli-ns");
    assert_eq!(inspected["status"]["linux"]["namespaces"]["options"]["pid"], "CONTAINER");
    assert!(inspected["status"]["createdAt"].as_str().unwrap().ends_with('Z'), "{inspected}");

    // create (pulling the image first) prints the container's ID; start runs it.
    let args = ["create", "--with-pull", &pod, container_config.to_str().unwrap(), pod_config.to_str().unwrap()];
    let container = berth_ok(socket, &args).trim().to_owned();
    assert_eq!(container.len(), 64, "{container}");
    assert_eq!(berth_ok(socket, &["ps", "-q"]).trim(), "", "ps shows running containers only");
    let listed = json(socket, &["ps", "-a", "--pod", &pod, "-o", "json"]);
    assert_eq!(listed["containers"][0]["id"], container.as_str());
    assert_eq!(listed["containers"][0]["state"], "CONTAINER_CREATED");
    assert_eq!(berth_ok(socket, &["start", &container]).trim(), container);
    assert_eq!(berth_ok(socket, &["ps", "-q"]).trim(), container);
    assert_eq!(berth_ok(socket, &["ps", "-q", "--name", "^main$", "--label", "role=main"]).trim(), container);
    assert_eq!(berth_ok(socket, &["ps", "-q", "--state", "exited"]).trim(), "");
    let table = berth_ok(socket, &["ps"]);
    assert!(table.starts_with("CONTAINER"), "{table}");
    assert!(table.contains("Running") && table.contains("cli-web") && table.contains("cli-ns"), "{table}");
    let inspected = json(socket, &["inspect", &container[..12]]);
    assert_eq!(inspected["status"]["state"], "CONTAINER_RUNNING");
    assert_eq!(inspected["status"]["metadata"]["name"], "main");
    let log_path = inspected["status"]["logPath"].as_str().unwrap().to_owned();
    assert_eq!(Path::new(&log_path), logs.join("main.log"));

    // logs: stdout lines on stdout, stderr lines on stderr, with timestamps on request.
    eventually("the container's output in its log", || {
        let output = berth(socket, &["logs", &container]);
        String::from_utf8_lossy(&output.stdout) == "hello-out\n" && String::from_utf8_lossy(&output.stderr) == "oops\n"
    });
    // --tail counts the lines of both streams: the last two are hello-out (stdout) and oops (stderr).
    let stamped = berth_ok(socket, &["logs", "--timestamps", "--tail", "2", &container]);
    let (stamp, line) = stamped.trim_end().split_once(' ').unwrap();
    assert_eq!(line, "hello-out");
    assert!(stamp.ends_with('Z') && stamp.contains('T'), "{stamped}");

    // exec -s: the command's streams and exit code; a timeout kills the command, not the container.
    let output = berth(socket, &["exec", "-s", &container, "sh", "-c", "echo in-$GREETING; echo bad >&2; exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "in-out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "bad\n");
    assert_eq!(berth_ok(socket, &["exec", "-s", &container[..12], "cat", "/proc/1/comm"]), "sleep\n");
    let started = Instant::now();
    let output = berth(socket, &["exec", "-s", "--timeout", "1", &container, "sleep", "30"]);
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "the exec ran {:?}", started.elapsed());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ExecSync failed"), "{output:?}");
    assert_eq!(berth_ok(socket, &["ps", "-q"]).trim(), container, "the container survives the timeout");

    // rm refuses a running container; stop, then rm (which takes the log file too).
    let output = berth(socket, &["rm", &container]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is running"), "{output:?}");
    assert_eq!(berth_ok(socket, &["stop", "-t", "1", &container]).trim(), container);
    let inspected = json(socket, &["inspect", "-q", &container]);
    assert_eq!(inspected["status"]["state"], "CONTAINER_EXITED");
    assert_ne!(inspected["status"]["finishedAt"], "0001-01-01T00:00:00Z");
    assert_eq!(berth_ok(socket, &["ps", "-q", "-s", "exited"]).trim(), container);
    assert_eq!(berth_ok(socket, &["rm", &container]).trim(), container);
    assert_eq!(berth_ok(socket, &["ps", "-aq"]).trim(), "");
    assert!(!Path::new(&log_path).exists(), "rm removes the log file as crictl does");

    // rmp refuses a ready pod; stopp, then rmp.
    let output = berth(socket, &["rmp", &pod]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is running"), "{output:?}");
    assert_eq!(berth_ok(socket, &["stopp", &pod]).trim(), format!("Stopped sandbox {pod}"));
    assert_eq!(berth_ok(socket, &["pods", "-q", "--state", "notready"]).trim(), pod);
    assert_eq!(berth_ok(socket, &["rmp", &pod]).trim(), format!("Removed sandbox {pod}"));
    assert_eq!(berth_ok(socket, &["pods", "-q"]).trim(), "");
    let output = berth(socket, &["inspectp", &pod]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NotFound"), "{output:?}");
}

#[test]
fn run_takes_yaml_configs_pulls_the_image_and_logs_follow_until_the_container_exits() {
    let registry = TestRegistry::get();
    let image = &registry.image("busybox").reference;
    let (dirs, daemon) = daemon(&registry, false);
    let socket = daemon.socket.as_path();
    let logs = dirs.path().join("pod-logs");

    // Host network (NamespaceMode NODE = 2): no CNI network is configured.
    let pod_config = dirs.path().join("pod.yaml");
    std::fs::write(
        &pod_config,
        format!(
            "metadata:\n  name: cli-job\n  namespace: batch\nlog_directory: {}\nlinux:\n  security_context:\n    \
             namespace_options:\n      network: 2\n",
            logs.display()
        ),
    )
    .unwrap();
    let job_config = dirs.path().join("job.yaml");
    std::fs::write(
        &job_config,
        format!(
            "metadata:\n  name: job\nimage:\n  image: {image}\ncommand: [sh, -c]\nargs:\n  - 'for i in 1 2 3; do echo \
             line-$i; sleep 0.3; done; echo done >&2'\nlog_path: job.log\n"
        ),
    )
    .unwrap();
    // No extension: YAML by content.
    let sleeper_config = dirs.path().join("sleeper-config");
    std::fs::write(
        &sleeper_config,
        format!("metadata: {{name: sleeper}}\nimage: {{image: {image}}}\ncommand: [sleep, '3600']\nlog_path: s.log\n"),
    )
    .unwrap();

    // The image is absent: run pulls it, runs the pod, creates and starts the container.
    let job = berth_ok(socket, &["run", job_config.to_str().unwrap(), pod_config.to_str().unwrap()]).trim().to_owned();
    assert_eq!(job.len(), 64, "{job}");
    assert!(berth_ok(socket, &["images", "-o", "json"]).contains(image.as_str()), "run pulled the image");
    let pod_id = berth_ok(socket, &["pods", "-q", "--name", "^cli-job$"]).trim().to_owned();
    assert_eq!(pod_id.len(), 64, "{pod_id}");
    assert_eq!(json(socket, &["ps", "-a", "-o", "json"])["containers"][0]["podSandboxId"], pod_id.as_str());

    // logs -f prints the lines as they come and ends by itself once the container has exited.
    let mut follow = Command::new(berth_bin())
        .args(["logs", "-f", &job])
        .env("CONTAINER_RUNTIME_ENDPOINT", format!("unix://{}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while follow.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("logs -f did not end after the container exited");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = follow.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "line-1\nline-2\nline-3\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "done\n");
    let inspected = json(socket, &["inspect", &job]);
    assert_eq!(inspected["status"]["state"], "CONTAINER_EXITED");
    assert_eq!(inspected["status"]["exitCode"], 0);
    assert_eq!(berth_ok(socket, &["ps", "-q", "--state", "exited"]).trim(), job);
    // --tail counts the lines of both streams.
    let tail = berth(socket, &["logs", "--tail", "2", &job]);
    assert_eq!(
        (String::from_utf8_lossy(&tail.stdout), String::from_utf8_lossy(&tail.stderr)),
        ("line-3\n".into(), "done\n".into())
    );

    // A second container in the same pod; rm -f kills it first, and --keep-logs keeps its log.
    let args = ["create", &pod_id[..12], sleeper_config.to_str().unwrap(), pod_config.to_str().unwrap()];
    let sleeper = berth_ok(socket, &args).trim().to_owned();
    berth_ok(socket, &["start", &sleeper]);
    assert_eq!(berth_ok(socket, &["ps", "-q"]).trim(), sleeper);
    let output = berth(socket, &["exec", "-s", &sleeper, "false"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(berth_ok(socket, &["rm", "-f", "--keep-logs", &sleeper]).trim(), sleeper);
    assert!(logs.join("s.log").exists(), "--keep-logs keeps the log file");
    assert_eq!(berth_ok(socket, &["ps", "-aq"]).trim(), job);

    // rmp -f stops the ready pod first, and takes its exited container with it.
    let removed = berth_ok(socket, &["rmp", "-f", &pod_id]);
    assert!(removed.contains(&format!("Stopped sandbox {pod_id}")), "{removed}");
    assert!(removed.contains(&format!("Removed sandbox {pod_id}")), "{removed}");
    assert_eq!(berth_ok(socket, &["pods", "-q"]).trim(), "");
    assert_eq!(berth_ok(socket, &["ps", "-aq"]).trim(), "");
}

#[test]
fn config_mistakes_are_one_clear_line() {
    let dirs = DaemonDirs::new();
    dirs.write_config("");
    let daemon = Daemon::start_in(&dirs);
    let socket = daemon.socket.as_path();
    let missing = dirs.path().join("absent.json");
    let output = berth(socket, &["runp", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot read config") && stderr.contains("absent.json"), "{stderr}");

    let nameless = dirs.path().join("pod.yaml");
    std::fs::write(&nameless, "metadata:\n  namespace: x\n").unwrap();
    let output = berth(socket, &["runp", nameless.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("metadata needs a name and a namespace"), "{output:?}");
    assert_eq!(berth_ok(socket, &["pods", "-q"]).trim(), "", "nothing was run");

    let output = berth(socket, &["exec", "abc", "true"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("container abc does not exist"), "{output:?}");
}
