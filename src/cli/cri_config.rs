//! crictl's config files for `berth runp`, `create` and `run`: a PodSandboxConfig or a ContainerConfig in
//! JSON or YAML, spelled as crictl's files are (the CRI field names of Go's json tags, i.e. snake_case, and
//! enums as numbers; fields left out take their defaults), checked as crictl checks them.
//!
//! The CRI types deserialize themselves (serde derives added in build.rs), so every field crictl accepts
//! is accepted here without a list to keep in step with the API.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::cri::v1::{ContainerConfig, PodSandboxConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config {} as JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot parse config {} as YAML", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("config {}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: &'static str },
    #[error("cannot make a pod UID")]
    Uid(#[source] std::io::Error),
}

/// The syntax of a config file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Syntax {
    Json,
    Yaml,
}

/// By extension (`.json`, `.yaml`, `.yml`); otherwise JSON when the text starts with `{`, else YAML.
fn syntax(path: &Path, text: &str) -> Syntax {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("json") => Syntax::Json,
        Some("yaml" | "yml") => Syntax::Yaml,
        _ if text.trim_start().starts_with('{') => Syntax::Json,
        _ => Syntax::Yaml,
    }
}

fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigFileError> {
    match syntax(path, text) {
        Syntax::Json => {
            serde_json::from_str(text).map_err(|source| ConfigFileError::Json { path: path.into(), source })
        }
        Syntax::Yaml => {
            serde_yaml_ng::from_str(text).map_err(|source| ConfigFileError::Yaml { path: path.into(), source })
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.into(), source })
}

/// A pod config file: metadata with a name and a namespace is required; a missing UID is made up (a random
/// UUID), as crictl does.
pub fn load_pod_config(path: &Path) -> Result<PodSandboxConfig, ConfigFileError> {
    let mut config = parse_pod_config(path, &read(path)?)?;
    if let Some(metadata) = config.metadata.as_mut().filter(|m| m.uid.is_empty()) {
        metadata.uid = random_uuid().map_err(ConfigFileError::Uid)?;
    }
    Ok(config)
}

fn parse_pod_config(path: &Path, text: &str) -> Result<PodSandboxConfig, ConfigFileError> {
    let config: PodSandboxConfig = parse(path, text)?;
    let invalid = |problem| Err(ConfigFileError::Invalid { path: path.into(), problem });
    match &config.metadata {
        None => invalid("metadata is not set"),
        Some(metadata) if metadata.name.is_empty() || metadata.namespace.is_empty() => {
            invalid("metadata needs a name and a namespace")
        }
        Some(_) => Ok(config),
    }
}

/// A container config file: metadata with a name and an image are required. The image as written is also
/// the user-specified image, as crictl sends it.
pub fn load_container_config(path: &Path) -> Result<ContainerConfig, ConfigFileError> {
    parse_container_config(path, &read(path)?)
}

fn parse_container_config(path: &Path, text: &str) -> Result<ContainerConfig, ConfigFileError> {
    let mut config: ContainerConfig = parse(path, text)?;
    let invalid = |problem| Err(ConfigFileError::Invalid { path: path.into(), problem });
    match &config.metadata {
        None => return invalid("metadata is not set"),
        Some(metadata) if metadata.name.is_empty() => return invalid("metadata needs a name"),
        Some(_) => {}
    }
    match config.image.as_mut() {
        Some(image) if !image.image.is_empty() => {
            if image.user_specified_image.is_empty() {
                image.user_specified_image = image.image.clone();
            }
            Ok(config)
        }
        _ => invalid("image is not set (image: {image: NAME})"),
    }
}

/// `KeyValue.value` (an env value: `bytes` since CRI 1.34) as a JSON or YAML string, as cri-api's own
/// `KeyValue.MarshalJSON` keeps it; bytes that are not UTF-8 become U+FFFD, as there.
pub mod string_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(deserializer)?.into_bytes())
    }
}

/// A version 4 UUID from the kernel's random numbers.
fn random_uuid() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::{MountPropagation, NamespaceMode, Protocol};

    // The shapes of crictl's docs (docs/crictl.md) and of the files people keep next to it.
    const POD_JSON: &str = r#"{
        "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83djaidwnduwk28bcsb"},
        "hostname": "web",
        "log_directory": "/tmp/pod-logs",
        "dns_config": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]},
        "port_mappings": [{"protocol": 1, "container_port": 53, "host_port": 5353, "host_ip": "127.0.0.1"}],
        "labels": {"app": "web"},
        "annotations": {"note": "x"},
        "linux": {
            "cgroup_parent": "/kubepods",
            "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
            "security_context": {"namespace_options": {"network": 2, "pid": 1, "ipc": 0}, "privileged": false}
        },
        "unknown_field": "ignored, as Go's json ignores it"
    }"#;

    const POD_YAML: &str = "
metadata:
  name: nginx-sandbox
  namespace: default
log_directory: /tmp/pod-logs
port_mappings:
  - protocol: 0
    container_port: 80
    host_port: 8080
labels:
  app: web
linux:
  security_context:
    namespace_options:
      network: 2
      pid: 0
";

    const CONTAINER_JSON: &str = r#"{
        "metadata": {"name": "busybox", "attempt": 2},
        "image": {"image": "busybox:latest"},
        "command": ["sh", "-c"],
        "args": ["echo hi; sleep 3600"],
        "working_dir": "/tmp",
        "envs": [{"key": "A", "value": "1"}, {"key": "B", "value": "two words"}],
        "mounts": [
            {"container_path": "/data", "host_path": "/srv/data", "readonly": true, "propagation": 1},
            {"container_path": "/cache", "host_path": "/srv/cache"}
        ],
        "log_path": "busybox.0.log",
        "stdin": false,
        "tty": false,
        "labels": {"tier": "backend"},
        "linux": {
            "resources": {"memory_limit_in_bytes": 15728640, "cpu_shares": 512},
            "security_context": {
                "namespace_options": {"pid": 1},
                "capabilities": {"add_capabilities": ["NET_ADMIN"], "drop_capabilities": ["ALL"]},
                "run_as_user": {"value": 1000},
                "readonly_rootfs": true
            }
        }
    }"#;

    const CONTAINER_YAML: &str = "
metadata:
  name: busybox
image:
  image: busybox:latest
command: [sh, -c, 'echo hi']
envs:
  - key: A
    value: '1'
mounts:
  - container_path: /data
    host_path: /srv/data
    readonly: true
    propagation: 2
log_path: busybox.log
linux:
  security_context:
    run_as_user:
      value: 0
";

    fn at(name: &str) -> PathBuf {
        PathBuf::from(format!("/configs/{name}"))
    }

    #[test]
    fn a_crictl_pod_config_parses_from_json() {
        let config = parse_pod_config(&at("pod.json"), POD_JSON).unwrap();
        let metadata = config.metadata.as_ref().unwrap();
        assert_eq!(
            (metadata.name.as_str(), metadata.namespace.as_str(), metadata.attempt),
            ("nginx-sandbox", "default", 1)
        );
        assert_eq!(metadata.uid, "hdishd83djaidwnduwk28bcsb");
        assert_eq!(config.hostname, "web");
        assert_eq!(config.log_directory, "/tmp/pod-logs");
        assert_eq!(config.dns_config.as_ref().unwrap().options, ["ndots:5"]);
        let port = &config.port_mappings[0];
        assert_eq!(port.protocol, Protocol::Udp as i32);
        assert_eq!((port.container_port, port.host_port, port.host_ip.as_str()), (53, 5353, "127.0.0.1"));
        assert_eq!(config.labels["app"], "web");
        let linux = config.linux.as_ref().unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods");
        assert_eq!(linux.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        let namespaces = linux.security_context.as_ref().unwrap().namespace_options.as_ref().unwrap();
        assert_eq!(namespaces.network, NamespaceMode::Node as i32);
        assert_eq!(namespaces.pid, NamespaceMode::Container as i32);
        assert_eq!(namespaces.ipc, NamespaceMode::Pod as i32);
    }

    #[test]
    fn a_crictl_pod_config_parses_from_yaml_whatever_the_file_is_called() {
        for name in ["pod.yaml", "pod.yml", "pod-config"] {
            let config = parse_pod_config(&at(name), POD_YAML).unwrap();
            assert_eq!(config.metadata.as_ref().unwrap().name, "nginx-sandbox");
            assert_eq!(config.port_mappings[0].host_port, 8080);
            assert_eq!(config.port_mappings[0].protocol, Protocol::Tcp as i32);
            let linux = config.linux.unwrap();
            let namespaces = linux.security_context.unwrap().namespace_options.unwrap();
            assert_eq!(namespaces.network, NamespaceMode::Node as i32);
        }
        // JSON in a file without an extension is JSON.
        assert_eq!(syntax(&at("pod"), POD_JSON), Syntax::Json);
        assert_eq!(syntax(&at("pod"), POD_YAML), Syntax::Yaml);
    }

    #[test]
    fn a_crictl_container_config_parses_from_json() {
        let config = parse_container_config(&at("container.json"), CONTAINER_JSON).unwrap();
        assert_eq!(config.metadata.as_ref().unwrap().attempt, 2);
        let image = config.image.as_ref().unwrap();
        assert_eq!((image.image.as_str(), image.user_specified_image.as_str()), ("busybox:latest", "busybox:latest"));
        assert_eq!(config.command, ["sh", "-c"]);
        assert_eq!(config.args, ["echo hi; sleep 3600"]);
        assert_eq!(config.working_dir, "/tmp");
        let envs: Vec<(&str, &[u8])> = config.envs.iter().map(|e| (e.key.as_str(), e.value.as_slice())).collect();
        assert_eq!(envs, [("A", &b"1"[..]), ("B", &b"two words"[..])]);
        let printed = serde_json::to_value(&config.envs[1]).unwrap();
        assert_eq!(printed, serde_json::json!({"key": "B", "value": "two words"}));
        assert_eq!(config.mounts.len(), 2);
        assert_eq!(config.mounts[0].container_path, "/data");
        assert_eq!(config.mounts[0].host_path, "/srv/data");
        assert!(config.mounts[0].readonly);
        assert_eq!(config.mounts[0].propagation, MountPropagation::PropagationHostToContainer as i32);
        assert!(!config.mounts[1].readonly);
        assert_eq!(config.mounts[1].propagation, MountPropagation::PropagationPrivate as i32);
        assert_eq!(config.log_path, "busybox.0.log");
        let linux = config.linux.as_ref().unwrap();
        let resources = linux.resources.as_ref().unwrap();
        assert_eq!((resources.memory_limit_in_bytes, resources.cpu_shares), (15 << 20, 512));
        let security = linux.security_context.as_ref().unwrap();
        assert_eq!(security.namespace_options.as_ref().unwrap().pid, NamespaceMode::Container as i32);
        assert_eq!(security.capabilities.as_ref().unwrap().drop_capabilities, ["ALL"]);
        assert_eq!(security.run_as_user.as_ref().unwrap().value, 1000);
        assert!(security.readonly_rootfs);
    }

    #[test]
    fn a_crictl_container_config_parses_from_yaml() {
        let config = parse_container_config(&at("container.yaml"), CONTAINER_YAML).unwrap();
        assert_eq!(config.command, ["sh", "-c", "echo hi"]);
        assert_eq!(config.envs[0].value, b"1");
        assert_eq!(config.mounts[0].propagation, MountPropagation::PropagationBidirectional as i32);
        let security = config.linux.unwrap().security_context.unwrap();
        assert_eq!(security.run_as_user.unwrap().value, 0, "a set zero is not an absent user");
    }

    #[test]
    fn configs_without_what_crictl_requires_are_refused() {
        fn problem<T: std::fmt::Debug>(result: Result<T, ConfigFileError>) -> &'static str {
            match result {
                Err(ConfigFileError::Invalid { problem, .. }) => problem,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(problem(parse_pod_config(&at("p.json"), "{}")), "metadata is not set");
        assert_eq!(
            problem(parse_pod_config(&at("p.json"), r#"{"metadata": {"name": "x"}}"#)),
            "metadata needs a name and a namespace"
        );
        assert_eq!(problem(parse_container_config(&at("c.yaml"), "image: {image: x}")), "metadata is not set");
        assert!(problem(parse_container_config(&at("c.yaml"), "metadata: {name: x}")).starts_with("image is not set"));
        assert!(matches!(parse_pod_config(&at("p.json"), "{\"metadata\": "), Err(ConfigFileError::Json { .. })));
        assert!(matches!(parse_pod_config(&at("p.yaml"), "metadata: {name: [x"), Err(ConfigFileError::Yaml { .. })));
    }

    #[test]
    fn a_missing_pod_uid_is_made_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod.yaml");
        std::fs::write(&path, "metadata: {name: a, namespace: b}\n").unwrap();
        let uid = load_pod_config(&path).unwrap().metadata.unwrap().uid;
        assert_eq!(uid.len(), 36, "{uid}");
        assert_eq!(uid.as_bytes()[14], b'4', "{uid}");
        assert_ne!(uid, load_pod_config(&path).unwrap().metadata.unwrap().uid);
        assert!(matches!(load_pod_config(&dir.path().join("absent.json")), Err(ConfigFileError::Read { .. })));
    }
}
