//! Pod sandboxes through CRI: pinned namespaces, CNI with Debian's bridge + host-local plugins, the pod's
//! /etc files, name reservation, filters, and nothing left after Stop and Remove. The daemon runs in a
//! network namespace of its own, so bridges, veths and leases never touch the host's network.

use std::path::Path;
use std::process::Command;

use berth::cri::v1::*;
use tonic::Code;

use crate::support::{Daemon, DaemonDirs, require_tool};

fn conflist(dirs: &DaemonDirs) -> std::path::PathBuf {
    let leases = dirs.path().join("cni-leases");
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    std::fs::write(
        dirs.cni_conf_dir().join("10-pods.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "berth-e2e",
            "plugins": [{
                "type": "bridge", "bridge": "berthe2e0", "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "dataDir": leases, "ranges": [[{"subnet": "10.99.7.0/24"}]]}
            }]
        })
        .to_string(),
    )
    .unwrap();
    leases
}

fn pod_config(name: &str, labels: &[(&str, &str)]) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        linux: Some(LinuxPodSandboxConfig {
            sysctls: [("net.ipv4.ip_unprivileged_port_start".to_owned(), "0".to_owned())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nsenter(args: &[&str]) -> String {
    let output = Command::new("nsenter").args(args).output().unwrap();
    assert!(output.status.success(), "nsenter {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_pod_sandbox_gets_namespaces_an_ip_and_files_and_leaves_nothing() {
    require_tool("nsenter");
    assert!(Path::new("/usr/lib/cni/bridge").exists(), "missing prerequisite containernetworking-plugins");
    let dirs = DaemonDirs::new();
    let leases = conflist(&dirs);
    dirs.write_config("");
    let daemon = Daemon::start_in_own_netns(&dirs);
    let mut client = daemon.client().await;

    let run = |config: PodSandboxConfig| RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    let id = client
        .runtime
        .run_pod_sandbox(run(pod_config("web", &[("app", "web")])))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(id.len(), 64, "{id}");
    // kubelet retrying after its timeout gets the same sandbox, not "name is reserved".
    let again = client.runtime.run_pod_sandbox(run(pod_config("web", &[("app", "web")]))).await.unwrap().into_inner();
    assert_eq!(again.pod_sandbox_id, id);

    let status = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let sandbox = status.status.unwrap();
    assert_eq!(sandbox.state(), PodSandboxState::SandboxReady);
    let ip = sandbox.network.unwrap().ip;
    assert!(ip.starts_with("10.99.7."), "pod IP {ip:?}");
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let netns = info["netns"].as_str().unwrap().to_owned();
    let utsns = info["utsns"].as_str().unwrap().to_owned();

    // From inside: the address on eth0, the sysctl, the hostname.
    let addresses = nsenter(&[&format!("--net={netns}"), "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addresses.contains(&format!("{ip}/24")), "{addresses}");
    let port_start = nsenter(&[&format!("--net={netns}"), "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    assert_eq!(port_start.trim(), "0");
    assert_eq!(nsenter(&[&format!("--uts={utsns}"), "hostname"]).trim(), "web-host");
    let pod_dir = Path::new(&netns).parent().unwrap().parent().unwrap().to_path_buf();
    let resolv = std::fs::read_to_string(pod_dir.join("resolv.conf")).unwrap();
    assert_eq!(resolv, "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n");
    assert!(std::fs::read_to_string(pod_dir.join("hosts")).unwrap().contains(&format!("{ip}\tweb-host")));

    // Filters.
    let lister = client.clone();
    let list = |filter: PodSandboxFilter| {
        let mut client = lister.clone();
        async move {
            client
                .runtime
                .list_pod_sandbox(ListPodSandboxRequest { filter: Some(filter) })
                .await
                .unwrap()
                .into_inner()
                .items
        }
    };
    let selector =
        |v: &str| PodSandboxFilter { label_selector: [("app".to_owned(), v.to_owned())].into(), ..Default::default() };
    assert_eq!(list(selector("web")).await.len(), 1);
    assert!(list(selector("other")).await.is_empty());
    assert_eq!(list(PodSandboxFilter { id: id[..12].to_owned(), ..Default::default() }).await.len(), 1);

    // Stop releases the lease; Remove takes the rest; both may be repeated.
    let lease_files = || {
        std::fs::read_dir(leases.join("berth-e2e"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("10.")).count())
            .unwrap_or(0)
    };
    assert_eq!(lease_files(), 1);
    client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    assert_eq!(lease_files(), 0, "IP lease kept after StopPodSandbox");
    let stopped = PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: PodSandboxState::SandboxNotready.into() }),
        ..Default::default()
    };
    assert_eq!(list(stopped).await.len(), 1);
    client.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    client.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    let gone = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(!pod_dir.exists(), "pod directory left");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&pod_dir.display().to_string()), "pinned namespace left mounted");
    let links = nsenter(&[&format!("--net=/proc/{}/ns/net", daemon.pid()), "ip", "-o", "link"]);
    assert!(!links.contains("veth"), "veth left: {links}");

    // A sysctl that is not namespaced is refused and nothing is made; a host-network pod gets no IP.
    let mut bad = pod_config("bad", &[]);
    bad.linux.as_mut().unwrap().sysctls = [("kernel.panic".to_owned(), "1".to_owned())].into();
    let refused = client.runtime.run_pod_sandbox(run(bad)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let mut host = pod_config("host", &[]);
    host.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let host_id = client.runtime.run_pod_sandbox(run(host)).await.unwrap().into_inner().pod_sandbox_id;
    let host_status = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: host_id.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(host_status.status.unwrap().network.unwrap().ip, "");
    client.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: host_id }).await.unwrap();
    assert!(list(PodSandboxFilter::default()).await.is_empty());
}

#[tokio::test]
async fn without_a_network_configuration_a_pod_fails_cleanly() {
    let dirs = DaemonDirs::new();
    dirs.write_config("");
    let daemon = Daemon::start_in_own_netns(&dirs);
    let mut client = daemon.client().await;
    let err = client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("nonet", &[])),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no valid CNI network configuration"), "{}", err.message());
    let pods =
        client.runtime.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "a failed sandbox is listed");
    assert_eq!(std::fs::read_dir(dirs.state().join("pods")).map(|d| d.count()).unwrap_or(0), 0, "pod directory left");
}

/// The namespaces are pinned on one thread while the shim starts on another. When pinning fails (here a
/// namespaced sysctl with a value the kernel refuses, found only when it is written), the shim that did start
/// is waited for and removed with the rest: nothing of the pod is left.
#[tokio::test]
async fn a_sandbox_whose_namespaces_cannot_be_made_leaves_nothing() {
    let dirs = DaemonDirs::new();
    conflist(&dirs);
    dirs.write_config("");
    let daemon = Daemon::start_in_own_netns(&dirs);
    let mut client = daemon.client().await;
    let mut config = pod_config("badsysctl", &[]);
    config.linux.as_mut().unwrap().sysctls =
        [("net.ipv4.ip_unprivileged_port_start".to_owned(), "not-a-port".to_owned())].into();
    let request = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    let err = client.runtime.run_pod_sandbox(request).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let message = err.message();
    assert!(message.contains("pin the pod's namespaces"), "which step failed: {message}");
    assert!(message.contains("ip_unprivileged_port_start"), "which sysctl: {message}");
    let id = message
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|word| word.len() == 64)
        .unwrap_or_else(|| panic!("the pod id in {message}"))
        .to_owned();
    let pods = client.runtime.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner();
    assert!(pods.items.is_empty(), "a failed sandbox is listed");
    assert_eq!(crate::containers::leftovers(&dirs, &[id]), Vec::<String>::new());
}

#[tokio::test]
async fn a_sandbox_a_crash_left_half_made_is_undone_before_the_daemon_serves() {
    let dirs = DaemonDirs::new();
    let leases = conflist(&dirs);
    dirs.write_config("");
    let mut daemon = Daemon::start_in_own_netns(&dirs);
    let mut client = daemon.client().await;
    let request = RunPodSandboxRequest { config: Some(pod_config("crashy", &[])), runtime_handler: String::new() };
    let id = client.runtime.run_pod_sandbox(request).await.unwrap().into_inner().pod_sandbox_id;
    let pod_dir = dirs.state().join("pods").join(&id);
    assert!(pod_dir.join("ns/net").exists());
    drop(client);
    daemon.stop(nix::sys::signal::Signal::SIGKILL).await;

    // As if the crash had come in the middle of RunPodSandbox: the record still says Creating.
    {
        let store = berth_store::Store::open(&dirs.root().join("berth.redb")).unwrap();
        let mut record = store.get::<berth::records::PodRecord>(&id).unwrap().unwrap();
        record.state = berth::records::PodState::Creating;
        store.put(&record).unwrap();
    }
    let daemon = Daemon::start_in_own_netns(&dirs);
    let mut client = daemon.client().await;
    let pods =
        client.runtime.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "the half-made sandbox is still listed");
    assert!(!pod_dir.exists(), "its directory is left");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&pod_dir.display().to_string()));
    let leases_left = std::fs::read_dir(leases.join("berth-e2e"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("10.")).count())
        .unwrap_or(0);
    assert_eq!(leases_left, 0, "its IP lease is left");
}
