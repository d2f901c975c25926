//! Container Device Interface (CDI): devices a container asks for by a qualified name
//! (`vendor.com/class=name`), described by spec files that device plugins and drivers write to
//! `/etc/cdi` and `/var/run/cdi`. A device is a set of edits to the container's OCI spec: device nodes,
//! mounts, environment variables, hooks and additional groups; a spec file may add edits of its own that
//! apply once whenever any of its devices is used.
//!
//! kubelet passes devices in `ContainerConfig.CDI_devices` (device plugins' `CDIDevices`, DRA) and, from
//! older plugins, in annotations `cdi.k8s.io/<key>` holding comma-separated names. Both are honoured, each
//! device once.
//!
//! The registry reads every `*.json`, `*.yaml` and `*.yml` file of the configured directories, keeps what
//! it parsed, and on each resolution re-reads only the files whose size or modification time changed (or
//! that appeared), so a driver that writes its spec file after berth started is seen at the next
//! CreateContainer without a restart or a watch. A device defined in a later directory replaces the one of
//! an earlier directory, as CDI specifies; two definitions in the same directory are an error for the
//! containers that ask for that device. A file that does not parse is skipped (and named when a device
//! cannot be found).
//!
//! The spec format is small and stable, so it is read here with serde rather than with the Rust CDI crate,
//! which would bring a JSON-schema engine, a command-line parser and a second oci-spec version into the
//! daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use berth_error_kind::{ErrorKind, Kinded};
use serde::Deserialize;

use crate::cri::v1 as cri;

/// The annotation prefix that carries CDI device names (k8s.io/kubernetes pkg/kubelet/cm/devicemanager).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI device {name:?} is not a qualified name (vendor.com/class=name)")]
    BadName { name: String },
    #[error("CDI device {name} is not defined in any spec file of {dirs}{unreadable}")]
    Unknown { name: String, dirs: String, unreadable: String },
    #[error("CDI device {name} is defined twice in the same directory: {first} and {second}")]
    Conflict { name: String, first: PathBuf, second: PathBuf },
}

impl Kinded for CdiError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// A CDI spec file (cdiVersion 0.3.0 to 1.x): the fields a runtime applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecFile {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// Changes to a container's OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `KEY=VALUE`; a key already set is replaced.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<CdiMount>,
    #[serde(default)]
    pub hooks: Vec<CdiHook>,
    #[serde(default, rename = "additionalGIDs", alias = "additionalGids")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Where the node appears in the container.
    pub path: String,
    /// The host device it is (default: `path`).
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`; with major and minor, for a node the host does not have.
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// Device cgroup access, a combination of r, w and m (default rwm).
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiHook {
    /// The OCI hook list: prestart, createRuntime, createContainer, startContainer, poststart, poststop.
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// The device names a container asks for: `CDI_devices`, then the `cdi.k8s.io/` annotations (sorted by
/// key), each name once.
pub fn requested(config: &cri::ContainerConfig) -> Vec<String> {
    let mut names: Vec<String> = config.cdi_devices.iter().map(|d| d.name.clone()).collect();
    let annotations: BTreeMap<_, _> =
        config.annotations.iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).collect();
    for value in annotations.values() {
        names.extend(value.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned));
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// `vendor.com/class=name` → (`vendor.com/class`, `name`), checked as CDI's parser checks them.
pub fn parse_qualified(name: &str) -> Result<(&str, &str), CdiError> {
    let bad = || CdiError::BadName { name: name.to_owned() };
    let (kind, device) = name.split_once('=').ok_or_else(bad)?;
    let (vendor, class) = kind.split_once('/').ok_or_else(bad)?;
    let word = |s: &str, extra: &[char]| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    if !word(vendor, &['-', '_', '.']) || !word(class, &['-', '_']) || !word(device, &['-', '_', '.', ':']) {
        return Err(bad());
    }
    Ok((kind, device))
}

/// What one file held when it was last read.
struct CachedFile {
    modified: Option<SystemTime>,
    len: u64,
    parsed: Result<SpecFile, String>,
}

/// The CDI spec files of the configured directories, read again when they change.
pub struct Registry {
    dirs: Vec<PathBuf>,
    files: Mutex<HashMap<PathBuf, CachedFile>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("cdi::Registry").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        Registry { dirs, files: Mutex::new(HashMap::new()) }
    }

    /// The edits for `names`, in order: each device's own, then its spec file's (once per file). Blocking
    /// (it reads the directories): call it where a blocking step is fine.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<ContainerEdits>, CdiError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        for name in names {
            parse_qualified(name)?;
        }
        let mut files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let listed = self.refresh(&mut files);
        let mut edits = Vec::new();
        let mut spec_edits_added: Vec<&Path> = Vec::new();
        for name in names {
            let (kind, device) = parse_qualified(name)?;
            // The last directory that defines the device wins; within it, one definition only.
            let mut found: Option<(&Path, &SpecFile, &DeviceSpec)> = None;
            for dir_files in listed.iter().rev() {
                for path in dir_files {
                    let Some(Ok(spec)) = files.get(path).map(|f| &f.parsed) else { continue };
                    if spec.kind != kind {
                        continue;
                    }
                    for definition in spec.devices.iter().filter(|d| d.name == device) {
                        if let Some((first, _, _)) = found {
                            return Err(CdiError::Conflict {
                                name: name.clone(),
                                first: first.to_owned(),
                                second: path.clone(),
                            });
                        }
                        found = Some((path, spec, definition));
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            let Some((path, spec, definition)) = found else {
                let unreadable: Vec<String> = files
                    .iter()
                    .filter_map(|(path, f)| f.parsed.as_ref().err().map(|e| format!("{}: {e}", path.display())))
                    .collect();
                return Err(CdiError::Unknown {
                    name: name.clone(),
                    dirs: self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                    unreadable: if unreadable.is_empty() {
                        String::new()
                    } else {
                        format!(" (files that could not be read: {})", unreadable.join("; "))
                    },
                });
            };
            edits.push(definition.container_edits.clone());
            if !spec_edits_added.contains(&path) {
                spec_edits_added.push(path);
                edits.push(spec.container_edits.clone());
            }
        }
        Ok(edits)
    }

    /// Re-reads what changed; returns the spec files of each directory (in directory order, files sorted).
    fn refresh(&self, files: &mut HashMap<PathBuf, CachedFile>) -> Vec<Vec<PathBuf>> {
        let mut listed = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("json" | "yaml" | "yml")))
                .collect();
            paths.sort();
            for path in &paths {
                let Ok(metadata) = std::fs::metadata(path) else { continue };
                let (modified, len) = (metadata.modified().ok(), metadata.len());
                if files.get(path).is_some_and(|f| f.modified == modified && f.len == len) {
                    continue;
                }
                let parsed = read_spec(path);
                match &parsed {
                    Ok(spec) => {
                        tracing::debug!(path = %path.display(), kind = %spec.kind, devices = spec.devices.len(), "CDI spec file read")
                    }
                    Err(err) => tracing::warn!(path = %path.display(), error = %err, "CDI spec file skipped"),
                }
                files.insert(path.clone(), CachedFile { modified, len, parsed });
            }
            listed.push(paths);
        }
        let present: std::collections::HashSet<&PathBuf> = listed.iter().flatten().collect();
        files.retain(|path, _| present.contains(path));
        listed
    }
}

fn read_spec(path: &Path) -> Result<SpecFile, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let spec: SpecFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?
    } else {
        serde_yaml_ng::from_slice(&bytes).map_err(|e| e.to_string())?
    };
    let major = spec.cdi_version.split('.').next().and_then(|m| m.parse::<u32>().ok());
    if !matches!(major, Some(0 | 1)) {
        return Err(format!("cdiVersion {:?} is not one berth reads (0.x or 1.x)", spec.cdi_version));
    }
    if parse_qualified(&format!("{}=x", spec.kind)).is_err() {
        return Err(format!("kind {:?} is not vendor.com/class", spec.kind));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn names_come_from_cdi_devices_and_annotations_once_each() {
        let config = cri::ContainerConfig {
            cdi_devices: vec![cri::CdiDevice { name: "a.com/x=1".into() }],
            annotations: [
                ("cdi.k8s.io/plugin".to_owned(), "a.com/x=1, b.com/y=2".to_owned()),
                ("other".to_owned(), "c.com/z=3".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        assert_eq!(requested(&config), ["a.com/x=1", "b.com/y=2"]);
    }

    #[test]
    fn qualified_names_are_checked() {
        assert_eq!(parse_qualified("nvidia.com/gpu=0").unwrap(), ("nvidia.com/gpu", "0"));
        assert_eq!(parse_qualified("vendor.com/class=all:mig-1").unwrap().1, "all:mig-1");
        for bad in ["gpu0", "nvidia.com=0", "nvidia.com/gpu=", "/gpu=0", "a.com/b/c=0", "a.com/gpu=-x"] {
            assert!(matches!(parse_qualified(bad), Err(CdiError::BadName { .. })), "{bad}");
        }
    }

    #[test]
    fn devices_resolve_by_directory_priority_and_files_are_reread_when_they_change() {
        let etc = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        write(
            etc.path(),
            "vendor.yaml",
            "cdiVersion: 0.6.0\nkind: vendor.com/dev\ndevices:\n- name: one\n  containerEdits:\n    env: [FROM=etc]\n- name: two\n  containerEdits:\n    env: [TWO=1]\ncontainerEdits:\n  env: [SPEC=etc]\n",
        );
        write(
            run.path(),
            "vendor.json",
            r#"{"cdiVersion": "1.0.0", "kind": "vendor.com/dev", "devices": [{"name": "one", "containerEdits": {"env": ["FROM=run"], "deviceNodes": [{"path": "/dev/one", "hostPath": "/dev/null"}], "additionalGIDs": [7]}}]}"#,
        );
        write(run.path(), "broken.json", "{not json");
        let registry = Registry::new(vec![etc.path().to_owned(), run.path().to_owned()]);

        let edits = registry.resolve(&["vendor.com/dev=one".into(), "vendor.com/dev=two".into()]).unwrap();
        // one from /run (it wins) with its file's (empty) edits, then two from /etc with its file's edits.
        assert_eq!(edits.len(), 4);
        assert_eq!(edits[0].env, ["FROM=run"]);
        assert_eq!(edits[0].device_nodes[0].host_path.as_deref(), Some("/dev/null"));
        assert_eq!(edits[0].additional_gids, [7]);
        assert_eq!(edits[2].env, ["TWO=1"]);
        assert_eq!(edits[3].env, ["SPEC=etc"]);

        let err = registry.resolve(&["vendor.com/dev=three".into()]).unwrap_err();
        assert!(matches!(err, CdiError::Unknown { .. }));
        assert!(err.to_string().contains("broken.json"), "{err}");

        // A file written later is read at the next resolution.
        write(run.path(), "late.yaml", "cdiVersion: 0.5.0\nkind: vendor.com/dev\ndevices:\n- name: three\n");
        assert_eq!(registry.resolve(&["vendor.com/dev=three".into()]).unwrap().len(), 2);

        // Two definitions in one directory are refused for that device.
        write(run.path(), "again.yaml", "cdiVersion: 0.5.0\nkind: vendor.com/dev\ndevices:\n- name: three\n");
        assert!(matches!(registry.resolve(&["vendor.com/dev=three".into()]), Err(CdiError::Conflict { .. })));
        // A removed file is forgotten.
        std::fs::remove_file(run.path().join("late.yaml")).unwrap();
        std::fs::remove_file(run.path().join("again.yaml")).unwrap();
        assert!(registry.resolve(&["vendor.com/dev=three".into()]).is_err());
    }
}
