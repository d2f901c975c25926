//! The RPCs built so far, answered by a real daemon over its socket.

use std::time::Duration;

use berth::cri::v1::*;
use tonic::Code;

use crate::support::{Daemon, DaemonDirs};

#[tokio::test]
async fn version_names_berth_and_the_cri_version() {
    let (_dirs, daemon) = Daemon::start();
    let mut client = daemon.client().await;
    let version = client.runtime.version(VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "berth");
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
    let (release, commit) = version.runtime_version.split_once('+').expect("version+commit");
    assert_eq!(release, env!("CARGO_PKG_VERSION"));
    assert!(!commit.is_empty());
}

#[tokio::test]
async fn network_becomes_ready_when_a_cni_config_appears_without_a_restart() {
    let (dirs, daemon) = Daemon::start();
    let mut client = daemon.client().await;
    let status = client.runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let conditions = status.status.unwrap().conditions;
    let runtime = conditions.iter().find(|c| c.r#type == "RuntimeReady").expect("RuntimeReady");
    assert!(runtime.status);
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").expect("NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(network.message.contains(&dirs.cni_conf_dir().display().to_string()), "{}", network.message);
    assert!(status.info.is_empty(), "info must be empty unless verbose");

    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    std::fs::write(dirs.cni_conf_dir().join("00-broken.conflist"), "{").unwrap();
    std::fs::write(
        dirs.cni_conf_dir().join("10-pods.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}"#,
    )
    .unwrap();
    let status = client.runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let network = status.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(network.status, "{network:?}");
    let info: serde_json::Value = serde_json::from_str(&status.info["network"]).unwrap();
    assert_eq!(info["name"], "pods");
    assert_eq!(info["plugins"], serde_json::json!(["bridge", "portmap"]));
    assert_eq!(info["runs"], "in process");
    // The cgroup entry reports what this host's mounts say, whichever they are.
    let cgroup: serde_json::Value = serde_json::from_str(&status.info["cgroup"]).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let favors = mountinfo.lines().any(|line| {
        line.split_once(" - ").is_some_and(|(_, after)| {
            let fields: Vec<&str> = after.split(' ').collect();
            fields[0].starts_with("cgroup") && fields[2].split(',').any(|o| o == "favordynmods")
        })
    });
    assert_eq!(cgroup["favordynmods"], favors, "{cgroup}");
    let v2 = mountinfo.lines().any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    assert_eq!(cgroup["layout"] == "v2", v2, "{cgroup}");
}

#[tokio::test]
async fn status_lists_runtime_handlers_and_hides_credentials() {
    let dirs = DaemonDirs::new();
    dirs.write_config(
        "[runtime_handlers.restricted]\nprivileged_without_host_devices = true\n\n\
         [registries.\"registry.example\"]\nusername = \"puller\"\npassword = \"s3cret-value\"\n",
    );
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    let status = client.runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let names: Vec<&str> = status.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "restricted"]);
    // kubelet admits `hostUsers: false` pods only on handlers that support user namespaces.
    assert!(status.runtime_handlers.iter().all(|h| h.features.is_some_and(|f| f.user_namespaces)));
    let features = status.features.expect("runtime features");
    // ... but never with the host's network (berth refuses that combination, as Kubernetes does).
    assert!(!features.user_namespaces_host_network);
    let everything = format!("{:?}", status.info);
    assert!(!everything.contains("s3cret-value"), "credentials leaked into Status: {everything}");
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(config["registries"]["registry.example"]["username"], "puller");
    assert!(!daemon.log_text().contains("s3cret-value"));
}

#[tokio::test]
async fn runtime_config_reports_the_configured_cgroup_driver() {
    let (_dirs, daemon) = Daemon::start();
    let mut client = daemon.client().await;
    let answer = client.runtime.runtime_config(RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(answer.linux.unwrap().cgroup_driver(), CgroupDriver::Cgroupfs);

    let dirs = DaemonDirs::new();
    dirs.write_config("[cgroup]\ndriver = \"systemd\"\n");
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    let answer = client.runtime.runtime_config(RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(answer.linux.unwrap().cgroup_driver(), CgroupDriver::Systemd);
}

fn pod_cidr_request(cidr: &str) -> UpdateRuntimeConfigRequest {
    UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: cidr.to_owned() }) }),
    }
}

async fn reported_pod_cidr(daemon: &Daemon) -> String {
    let mut client = daemon.client().await;
    let status = client.runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["runtimeConfig"]).unwrap();
    config["podCIDR"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_pod_cidr_survives_a_restart_and_bad_ones_are_refused() {
    let (dirs, mut daemon) = Daemon::start();
    let mut client = daemon.client().await;
    client.runtime.update_runtime_config(pod_cidr_request("10.244.0.0/24,fd00:10:244::/64")).await.unwrap();
    let refused = client.runtime.update_runtime_config(pod_cidr_request("10.244.0.0/99")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("10.244.0.0/99"), "{}", refused.message());
    assert!(daemon.stop(nix::sys::signal::Signal::SIGTERM).await.success());

    let daemon = Daemon::start_in(&dirs);
    assert_eq!(reported_pod_cidr(&daemon).await, "10.244.0.0/24,fd00:10:244::/64");
}

#[tokio::test]
async fn image_fs_info_measures_the_image_store() {
    let (dirs, daemon) = Daemon::start();
    let mut client = daemon.client().await;
    let before = client.image.image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    assert!(before.container_filesystems.is_empty());
    let [fs] = before.image_filesystems.as_slice() else { panic!("one image filesystem: {before:?}") };
    let images = dirs.root().join("images");
    assert_eq!(fs.fs_id.as_ref().unwrap().mountpoint, images.display().to_string());
    assert!(fs.timestamp > 0);
    let (bytes, inodes) = (fs.used_bytes.unwrap().value, fs.inodes_used.unwrap().value);

    std::fs::create_dir(images.join("probe")).unwrap();
    std::fs::write(images.join("probe/layer"), vec![1u8; 3 << 20]).unwrap();
    let after = client.image.image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    let fs = &after.image_filesystems[0];
    assert!(fs.used_bytes.unwrap().value >= bytes + (3 << 20), "{fs:?}");
    assert_eq!(fs.inodes_used.unwrap().value, inodes + 2);
    assert!(fs.timestamp >= after.image_filesystems[0].timestamp);
}

#[tokio::test]
async fn rpcs_refuse_an_empty_request_for_what_it_is() {
    let (_dirs, daemon) = Daemon::start();
    let mut client = daemon.client().await;
    let status = client.runtime.checkpoint_container(CheckpointContainerRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("location"), "{status:?}");
    // The daemon logs one line per RPC with its name and code.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = daemon.log_text();
    assert!(log.contains("method=CheckpointContainer") && log.contains("code=InvalidArgument"), "{log}");
    let status = client.runtime.create_container(CreateContainerRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client.runtime.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
