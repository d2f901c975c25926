//! Pod networking through CRI with Debian's bridge + host-local + portmap + loopback plugins: HTTP to the
//! web image on its pod IP, a hostPort on 127.0.0.1, pod-to-pod traffic, the pod's resolv.conf as its
//! containers see it, NetworkReady following the configuration directory, a daemon killed with -9 and
//! restarted before Stop and Remove, a failing plugin, and a failing DEL retried until it succeeds.
//!
//! Every daemon runs in a network namespace the test creates ([`TestNetns`]); images are pulled first by a
//! daemon in the host's network on the same root. Bridges, veths, leases and iptables rules stay in the
//! namespace, and are checked there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::cli::client::Client;
use berth::cri::v1::*;
use nix::sys::signal::Signal;
use tonic::Code;

use crate::support::cri::{container_config, remove_pod, run_container, stop_pod};
use crate::support::netns::TestNetns;
use crate::support::registry::TestRegistry;
use crate::support::{DaemonDirs, repo_root, require_tool};

const NETWORK: &str = "berth-net-e2e";

pub(crate) fn require_plugins() {
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        assert!(
            Path::new("/usr/lib/cni").join(plugin).exists(),
            "missing prerequisite /usr/lib/cni/{plugin}: install containernetworking-plugins (hack/install-deps.sh)"
        );
    }
    require_tool("iptables-save");
    require_tool("curl");
}

/// The leases directory of host-local, under the test's temp dir.
fn leases_dir(dirs: &DaemonDirs) -> PathBuf {
    dirs.path().join("cni-leases")
}

/// The bridge plugin's configuration: its own bridge name and a test subnet (inside the test's netns).
fn bridge_plugin(dirs: &DaemonDirs, bridge: &str, subnet: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
        "ipam": {
            "type": "host-local", "dataDir": leases_dir(dirs),
            "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
}

/// Writes `10-net.conflist` with `plugins` (written as a whole, then renamed into place).
fn write_conflist(dirs: &DaemonDirs, plugins: Vec<serde_json::Value>) {
    let dir = dirs.cni_conf_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let text = serde_json::json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": plugins}).to_string();
    std::fs::write(dirs.path().join("conflist.tmp"), text).unwrap();
    std::fs::rename(dirs.path().join("conflist.tmp"), dir.join("10-net.conflist")).unwrap();
}

/// The usual network: bridge + host-local, portmap, loopback.
pub(crate) fn write_bridge_conflist(dirs: &DaemonDirs, bridge: &str, subnet: &str) {
    write_conflist(
        dirs,
        vec![
            bridge_plugin(dirs, bridge, subnet),
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            serde_json::json!({"type": "loopback"}),
        ],
    );
}

/// The daemon's config: the test registry (for the host-network pull) and, for the fault tests, the
/// repository's `hack/cni` after Debian's plugins.
pub(crate) fn write_daemon_config(dirs: &DaemonDirs, registry: Option<&TestRegistry>) {
    let bin_dirs = format!("bin_dirs = [\"/usr/lib/cni\", {:?}]\n", repo_root().join("hack/cni"));
    let registries = registry.map(|r| format!("[registries.\"{}\"]\ninsecure = true\n", r.address)).unwrap_or_default();
    dirs.write_config_with_cni(&bin_dirs, &registries);
}

/// Lease files host-local holds (named by address).
fn leases(dirs: &DaemonDirs) -> Vec<String> {
    std::fs::read_dir(leases_dir(dirs).join(NETWORK))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("10."))
                .collect()
        })
        .unwrap_or_default()
}

/// Container ids with CNI result cache entries.
fn cached(dirs: &DaemonDirs) -> Vec<String> {
    berth_cni::cached_container_ids(&dirs.root().join("cni")).unwrap()
}

fn veths(netns: &TestNetns) -> Vec<String> {
    netns.links().lines().filter(|l| l.contains("veth")).map(str::to_owned).collect()
}

/// iptables rules that belong to pods: ones naming the pod's id, portmap's per-pod `CNI-DN-*` chains, or
/// any address of the test subnets (bridge's ipMasq chain and rules; the top-level chains portmap keeps,
/// such as `CNI-HOSTPORT-MASQ`, name none).
pub(crate) fn pod_rules(netns: &TestNetns, pod_id: &str) -> Vec<String> {
    netns
        .iptables()
        .lines()
        .filter(|line| line.contains(pod_id) || line.contains("CNI-DN-") || line.contains(" 10.99."))
        .map(str::to_owned)
        .collect()
}

/// Mounts under the test's directories.
fn mounts_under(dirs: &DaemonDirs) -> Vec<String> {
    let prefix = dirs.path().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|t| t.starts_with(&prefix)))
        .map(str::to_owned)
        .collect()
}

fn pod_dirs(dirs: &DaemonDirs) -> Vec<String> {
    std::fs::read_dir(dirs.state().join("pods"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub(crate) fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "net".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    }
}

async fn run_pod(client: &mut Client, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
    client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

pub(crate) async fn pod_ip(client: &mut Client, pod: &str) -> String {
    client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap_or_default()
        .ip
}

async fn exec(client: &mut Client, id: &str, cmd: &[&str]) -> ExecSyncResponse {
    client
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        })
        .await
        .expect("ExecSync")
        .into_inner()
}

pub(crate) async fn listed_pods(client: &mut Client) -> Vec<PodSandbox> {
    client.runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items
}

/// `curl` inside the test's netns until it answers (the server in a new container needs a moment), up to
/// 10 s; returns the body.
fn http_get(netns: &TestNetns, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = crate::support::output_via_files(&mut netns.command("curl", &["-sS", "--max-time", "3", url]));
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} in the test netns never answered: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts the network left no trace of any pod: no veth, lease, cache entry, pod rule, pod directory or
/// mount. `pods` are (id, IP) of the pods the test made.
pub(crate) fn assert_no_pod_network_left(netns: &TestNetns, dirs: &DaemonDirs, pods: &[(&str, &str)]) {
    assert_no_pod_network_left_but(netns, dirs, pods, &[]);
}

/// [`assert_no_pod_network_left`] for a test that mounted filesystems of its own (`own_mounts`) below
/// the daemon's directories.
pub(crate) fn assert_no_pod_network_left_but(
    netns: &TestNetns,
    dirs: &DaemonDirs,
    pods: &[(&str, &str)],
    own_mounts: &[PathBuf],
) {
    assert_eq!(veths(netns), Vec::<String>::new(), "veth left");
    assert_eq!(leases(dirs), Vec::<String>::new(), "IP lease left");
    assert_eq!(cached(dirs), Vec::<String>::new(), "CNI cache entry left");
    assert_eq!(pod_rules(netns, "no pod id"), Vec::<String>::new(), "pod iptables rules left");
    for (pod, ip) in pods {
        assert_eq!(pod_rules(netns, pod), Vec::<String>::new(), "iptables rules of pod {pod} ({ip}) left");
        assert!(!netns.run("ip", &["-o", "route"]).contains(&format!("{ip} ")), "a route to {ip} left");
    }
    assert_eq!(pod_dirs(dirs), Vec::<String>::new(), "pod directory left");
    let mut mounts = mounts_under(dirs);
    mounts.retain(|line| !is_own_mount(line, own_mounts));
    assert_eq!(mounts, Vec::<String>::new(), "mount left");
}

/// Whether a mountinfo line is one of a test's `own_mounts` (its mount point, field 5, is one of them).
pub(crate) fn is_own_mount(mountinfo_line: &str, own_mounts: &[PathBuf]) -> bool {
    mountinfo_line.split(' ').nth(4).is_some_and(|target| own_mounts.iter().any(|m| Path::new(target) == m))
}

#[tokio::test]
async fn web_answers_on_its_pod_ip_and_host_port_and_pods_reach_each_other() {
    require_plugins();
    let registry = TestRegistry::get();
    let web_image = registry.image("web").reference.clone();
    let busybox = registry.image("busybox").reference.clone();
    // Declared first, dropped last: the namespace goes after the shims in it.
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, Some(&registry));
    write_bridge_conflist(&dirs, "berthnet1", "10.99.41.0/24");
    let daemon = netns.start_daemon_with_images(&dirs, &[&web_image, &busybox]).await;
    let mut client = daemon.client().await;
    let logs = dirs.path().join("logs");

    let mut web_config = pod_config("web", &logs);
    web_config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp.into(),
        container_port: 80,
        host_port: 18080,
        host_ip: "127.0.0.1".into(),
    }];
    let web = run_pod(&mut client, &web_config).await.expect("RunPodSandbox web");
    let web_ip = pod_ip(&mut client, &web).await;
    assert!(web_ip.starts_with("10.99.41."), "web pod IP {web_ip:?}");
    run_container(&mut client, &web, &web_config, container_config("httpd", &web_image, &[])).await;

    // From the daemon's network namespace: the pod IP, then the hostPort on 127.0.0.1 (portmap's DNAT of
    // locally generated traffic; its default `snat` masquerades the 127.0.0.1 source and sets
    // route_localnet on the bridge so the packet may leave loopback).
    assert_eq!(http_get(&netns, &format!("http://{web_ip}/")), "berth-test-web\n");
    assert_eq!(http_get(&netns, "http://127.0.0.1:18080/"), "berth-test-web\n");

    // A second pod reaches the first by its IP; its containers see the DNS configuration it was given.
    let mut client_config = pod_config("client", &logs);
    client_config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["net.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    });
    let client_pod = run_pod(&mut client, &client_config).await.expect("RunPodSandbox client");
    let client_ip = pod_ip(&mut client, &client_pod).await;
    assert!(client_ip.starts_with("10.99.41.") && client_ip != web_ip, "client pod IP {client_ip:?}");
    let shell = run_container(
        &mut client,
        &client_pod,
        &client_config,
        container_config("shell", &busybox, &["sleep", "1000"]),
    )
    .await;
    // No `-T`: Debian's busybox-static 1.35 wget segfaults with it; ExecSync's timeout bounds the call.
    let got = exec(&mut client, &shell, &["wget", "-q", "-O", "-", &format!("http://{web_ip}/")]).await;
    assert_eq!((got.exit_code, String::from_utf8_lossy(&got.stdout).as_ref()), (0, "berth-test-web\n"), "{got:?}");
    let resolv = exec(&mut client, &shell, &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(
        String::from_utf8_lossy(&resolv.stdout),
        "search net.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5 timeout:2\n"
    );
    // The container's eth0 holds the pod IP the status reports.
    let addresses = exec(&mut client, &shell, &["ip", "-4", "-o", "addr", "show", "eth0"]).await;
    assert!(String::from_utf8_lossy(&addresses.stdout).contains(&format!("{client_ip}/24")), "{addresses:?}");

    // A hostNetwork pod skips CNI: no IP, no lease.
    let mut host_config = pod_config("host", &logs);
    host_config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let host = run_pod(&mut client, &host_config).await.expect("RunPodSandbox host");
    assert_eq!(pod_ip(&mut client, &host).await, "");
    assert_eq!(leases(&dirs).len(), 2, "{:?}", leases(&dirs));

    assert!(!pod_rules(&netns, &web).is_empty(), "no portmap rules while the web pod runs");
    for pod in [&web, &client_pod, &host] {
        stop_pod(&mut client, pod).await;
    }
    // Stop released the network already: the hostPort no longer answers.
    assert_eq!(leases(&dirs), Vec::<String>::new(), "IP lease kept after StopPodSandbox");
    let closed = crate::support::output_via_files(
        &mut netns.command("curl", &["-sS", "--max-time", "2", "http://127.0.0.1:18080/"]),
    );
    assert!(!closed.status.success(), "the hostPort still answers after StopPodSandbox");
    for pod in [&web, &client_pod, &host] {
        remove_pod(&mut client, pod).await;
    }
    assert!(listed_pods(&mut client).await.is_empty());
    assert_no_pod_network_left(&netns, &dirs, &[(&web, &web_ip), (&client_pod, &client_ip)]);
}

#[tokio::test]
async fn network_ready_follows_the_configuration_directory_without_a_restart() {
    require_plugins();
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, None);
    let daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    let network_ready = |mut client: Client| async move {
        let status = client.runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
        status.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").expect("NetworkReady")
    };
    let before = network_ready(client.clone()).await;
    assert!(!before.status, "{before:?}");
    assert_eq!(before.reason, "NetworkPluginNotReady");
    assert!(before.message.contains("no valid CNI network configuration"), "{before:?}");

    write_bridge_conflist(&dirs, "berthnet2", "10.99.42.0/24");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = network_ready(client.clone()).await;
        if now.status {
            assert_eq!((now.reason.as_str(), now.message.as_str()), ("", ""));
            break;
        }
        assert!(Instant::now() < deadline, "NetworkReady still false after the config appeared: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same daemon wires pods with it.
    let pod = run_pod(&mut client, &pod_config("ready", &dirs.path().join("logs"))).await.expect("RunPodSandbox");
    let ip = pod_ip(&mut client, &pod).await;
    assert!(ip.starts_with("10.99.42."), "{ip:?}");
    stop_pod(&mut client, &pod).await;
    remove_pod(&mut client, &pod).await;
    assert_no_pod_network_left(&netns, &dirs, &[(&pod, &ip)]);

    // And the condition goes back to false when the configuration goes.
    std::fs::remove_file(dirs.cni_conf_dir().join("10-net.conflist")).unwrap();
    let after = network_ready(client.clone()).await;
    assert!(!after.status, "{after:?}");
}

#[tokio::test]
async fn after_a_kill_9_and_a_restart_stop_and_remove_leave_no_lease_veth_or_port_rule() {
    require_plugins();
    let registry = TestRegistry::get();
    let web_image = registry.image("web").reference.clone();
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, Some(&registry));
    write_bridge_conflist(&dirs, "berthnet3", "10.99.43.0/24");
    let mut daemon = netns.start_daemon_with_images(&dirs, &[&web_image]).await;
    let mut client = daemon.client().await;
    let mut config = pod_config("survivor", &dirs.path().join("logs"));
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp.into(),
        container_port: 80,
        host_port: 18081,
        host_ip: String::new(),
    }];
    let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
    let ip = pod_ip(&mut client, &pod).await;
    run_container(&mut client, &pod, &config, container_config("httpd", &web_image, &[])).await;
    assert_eq!(http_get(&netns, "http://127.0.0.1:18081/"), "berth-test-web\n");
    assert_eq!(leases(&dirs), std::slice::from_ref(&ip));
    assert_eq!(veths(&netns).len(), 1, "{}", netns.links());
    assert!(!pod_rules(&netns, &pod).is_empty(), "no portmap rules for the pod:\n{}", netns.iptables());

    drop(client);
    daemon.stop(Signal::SIGKILL).await;
    // The daemon is gone; the pod's network is not.
    assert_eq!(http_get(&netns, &format!("http://{ip}/")), "berth-test-web\n");
    let daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    assert_eq!(pod_ip(&mut client, &pod).await, ip, "the pod IP changed across the restart");
    stop_pod(&mut client, &pod).await;
    remove_pod(&mut client, &pod).await;
    assert!(listed_pods(&mut client).await.is_empty());
    assert_no_pod_network_left(&netns, &dirs, &[(&pod, &ip)]);
}

#[tokio::test]
async fn a_failing_plugin_leaves_nothing_behind() {
    require_plugins();
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, None);
    let daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    for (mode, says) in
        [("error", "injected ADD failure"), ("crash", "about to crash"), ("garbage", "berth-test-plugin")]
    {
        // bridge and portmap succeed first (a veth, a lease, DNAT rules), then the test plugin fails.
        write_conflist(
            &dirs,
            vec![
                bridge_plugin(&dirs, "berthnet4", "10.99.44.0/24"),
                serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
                serde_json::json!({"type": "berth-test-plugin", "add": mode, "del": "pass"}),
            ],
        );
        let mut config = pod_config(&format!("doomed-{mode}"), &dirs.path().join("logs"));
        config.port_mappings = vec![PortMapping {
            protocol: Protocol::Tcp.into(),
            container_port: 80,
            host_port: 18082,
            host_ip: String::new(),
        }];
        let err = run_pod(&mut client, &config).await.expect_err("RunPodSandbox with a failing plugin");
        assert_ne!(err.code(), Code::Ok);
        assert!(err.message().contains(says), "{mode}: {}", err.message());
        assert!(err.message().contains("berth-test-plugin"), "{mode}: {}", err.message());
        assert!(listed_pods(&mut client).await.is_empty(), "{mode}: a failed sandbox is listed");
        assert_no_pod_network_left(&netns, &dirs, &[]);
    }
}

#[tokio::test]
async fn a_failed_del_is_retried_on_remove_and_at_start_up_and_never_blocks_removal() {
    require_plugins();
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, None);
    let marker = dirs.path().join("del-may-pass");
    // The test plugin first: its ADD passes, and DEL (run in reverse, after bridge's) fails until the
    // marker exists.
    write_conflist(
        &dirs,
        vec![
            serde_json::json!({"type": "berth-test-plugin", "add": "pass", "del": "error-unless-marker", "marker": marker}),
            bridge_plugin(&dirs, "berthnet5", "10.99.45.0/24"),
        ],
    );
    let mut daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    let logs = dirs.path().join("logs");
    let removed = run_pod(&mut client, &pod_config("removed", &logs)).await.expect("RunPodSandbox");
    let stopped = run_pod(&mut client, &pod_config("stopped", &logs)).await.expect("RunPodSandbox");
    let (removed_ip, stopped_ip) = (pod_ip(&mut client, &removed).await, pod_ip(&mut client, &stopped).await);
    assert_eq!(veths(&netns).len(), 2);

    // Stop succeeds although DEL fails: the pod is NotReady (kubelet can go on to remove it), and the
    // cached attachment is kept for the retries.
    stop_pod(&mut client, &removed).await;
    stop_pod(&mut client, &stopped).await;
    let states: Vec<i32> = listed_pods(&mut client).await.iter().map(|p| p.state).collect();
    assert_eq!(states, [PodSandboxState::SandboxNotready as i32; 2]);
    assert_eq!(cached(&dirs).len(), 2, "the failed DELs' cache entries are gone");
    // Remove retries DEL; it fails again, and the pod is removed anyway; its network namespace stays pinned
    // (bridge needs it for DEL) until a DEL succeeds.
    remove_pod(&mut client, &removed).await;
    let gone = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: removed.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(cached(&dirs).contains(&removed), "the removed pod's attachment was dropped before a DEL succeeded");
    assert!(dirs.state().join("pods").join(&removed).join("ns/net").exists());

    // The plugin recovers; the daemon restarts: start-up retries DEL for the stopped pod and for the removed
    // one, and unpins the removed one's namespace.
    std::fs::write(&marker, "").unwrap();
    drop(client);
    daemon.stop(Signal::SIGKILL).await;
    let daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    assert_eq!(cached(&dirs), Vec::<String>::new(), "start-up did not retry the failed DELs");
    assert_eq!(pod_dirs(&dirs), std::slice::from_ref(&stopped));
    assert_eq!(leases(&dirs), Vec::<String>::new());
    let listed = listed_pods(&mut client).await;
    assert_eq!(listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [stopped.as_str()]);
    remove_pod(&mut client, &stopped).await;
    assert_no_pod_network_left(&netns, &dirs, &[(&removed, &removed_ip), (&stopped, &stopped_ip)]);
}

#[tokio::test]
async fn bandwidth_annotations_shape_the_pods_traffic_through_the_bandwidth_plugin() {
    require_plugins();
    assert!(Path::new("/usr/lib/cni/bandwidth").exists(), "missing prerequisite /usr/lib/cni/bandwidth");
    require_tool("tc");
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, None);
    write_conflist(
        &dirs,
        vec![
            bridge_plugin(&dirs, "berthnet6", "10.99.46.0/24"),
            serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        ],
    );
    let daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    let mut config = pod_config("shaped", &dirs.path().join("logs"));
    config.annotations = [
        ("kubernetes.io/ingress-bandwidth".to_owned(), "10M".to_owned()),
        ("kubernetes.io/egress-bandwidth".to_owned(), "20M".to_owned()),
    ]
    .into();
    let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
    let ip = pod_ip(&mut client, &pod).await;
    // The plugin puts token-bucket filters on the pod's host-side veth (ingress) and on an ifb device
    // (egress), at the annotated rates.
    let qdiscs = netns.run("tc", &["qdisc", "show"]);
    assert!(qdiscs.contains("tbf") && qdiscs.contains("rate 10Mbit") && qdiscs.contains("rate 20Mbit"), "{qdiscs}");

    // A malformed annotation is refused before anything is made.
    let mut bad = pod_config("badly-shaped", &dirs.path().join("logs"));
    bad.annotations = [("kubernetes.io/egress-bandwidth".to_owned(), "fast".to_owned())].into();
    let err = run_pod(&mut client, &bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kubernetes.io/egress-bandwidth"), "{err:?}");

    stop_pod(&mut client, &pod).await;
    remove_pod(&mut client, &pod).await;
    assert_no_pod_network_left(&netns, &dirs, &[(&pod, &ip)]);
    let left = netns.run("tc", &["qdisc", "show"]);
    assert!(!left.contains("tbf"), "shaping left behind: {left}");
}
