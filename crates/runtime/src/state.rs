//! Container state on disk: `<root>/<id>/state.json` (what `state` reports and what another process needs to
//! find and signal the container), `<root>/<id>/config.json` (the spec as created, so delete works after the
//! bundle is gone) and `<root>/<id>/exec.fifo` (the start gate: the container's init blocks opening it for
//! writing until `start` opens it for reading).
//!
//! Files are replaced atomically (write to a temporary name, rename), so a crash leaves either the old
//! or the new state, never a torn one. The process is identified by pid *and* its start time, so a recycled
//! pid is never mistaken for the container.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// Lifecycle states of the OCI runtime spec (runtime.md, "State").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// The container's init process, in the runtime's PID namespace; 0 while creating.
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat when the container was created: tells the container from a recycled pid.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// The container's cgroup, relative to each hierarchy's root.
    pub cgroup_path: PathBuf,
    /// With the systemd cgroup driver, the scope unit that owns the cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_scope: Option<crate::cgroups::Scope>,
}

impl ContainerState {
    /// The container's cgroup, with its scope if systemd owns it.
    pub fn cgroup(&self) -> crate::error::Result<crate::cgroups::Cgroup> {
        let mut cgroup = crate::cgroups::Cgroup::new(crate::cgroups::Layout::host()?, self.cgroup_path.clone());
        cgroup.scope = self.systemd_scope.clone();
        Ok(cgroup)
    }
}

impl ContainerState {
    /// The OCI `state` document (runtime.md "State"), as `berth runtime state` prints it and hooks receive it.
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status,
            "pid": if matches!(status, Status::Stopped) { 0 } else { self.pid },
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
    }
}

/// The directory of one container's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> StateDir {
        StateDir { path: root.join(id) }
    }

    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    pub fn spec_file(&self) -> PathBuf {
        self.path.join("config.json")
    }

    pub fn exec_fifo(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn load(&self) -> Result<ContainerState> {
        let path = self.state_file();
        let text =
            std::fs::read(&path).map_err(|source| RuntimeError::State { step: "read", path: path.clone(), source })?;
        serde_json::from_slice(&text).map_err(|err| RuntimeError::State {
            step: "parse",
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        })
    }

    pub fn save(&self, state: &ContainerState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomic(&self.state_file(), &bytes)
    }
}

/// Writes `bytes` to `path` so readers see the old or the new content, never a mix.
///
/// No fsync: runtime state is volatile by design (it lives under /run and describes processes that a
/// reboot ends anyway), so it must survive a crash of the writer, which the rename guarantees, not a power
/// loss. Syncing would cost milliseconds per container on hosts where /run is on disk.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let failed = |step, source| RuntimeError::State { step, path: path.to_owned(), source };
    let mut file = std::fs::File::create(&temporary).map_err(|e| failed("create", e))?;
    file.write_all(bytes).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        failed("write", e)
    })?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        failed("rename", e)
    })
}

/// Field 22 (starttime) of /proc/<pid>/stat, or None if the process is gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); starttime is field 22.
    fields.get(22 - 3)?.parse().ok()
}

/// Whether `pid` is still the process recorded (alive, not a zombie, same start time).
pub fn is_same_live_process(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else { return false };
    let state = stat[close + 2..].chars().next();
    if matches!(state, Some('Z') | Some('X')) {
        return false;
    }
    process_start_time(pid) == Some(start_time)
}

/// Checks a container id: it names a directory, so only a safe alphabet, no path tricks.
pub fn validate_id(id: &str) -> Result<()> {
    let invalid = |reason| Err(RuntimeError::InvalidId { id: id.to_owned(), reason });
    if id.is_empty() {
        return invalid("it is empty");
    }
    if id.len() > 1024 {
        return invalid("it is longer than 1024 bytes");
    }
    if id.starts_with('.') {
        return invalid("it starts with a dot");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+')) {
        return invalid("only letters, digits and _ - . + are allowed");
    }
    Ok(())
}

/// The current time as RFC 3339 UTC with nanoseconds (no time-zone database needed).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// `seconds` and `nanos` since the Unix epoch as RFC 3339 UTC with nanoseconds.
pub fn rfc3339(seconds: i64, nanos: u32) -> String {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["abc", "a.b-c_d+1", "0123456789abcdef"] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "ä"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_627_006, 633_399_164), "2026-11-25T17:16:46.633399164Z");
    }

    #[test]
    fn this_process_is_live_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let start = process_start_time(pid).unwrap();
        assert!(is_same_live_process(pid, start));
        assert!(!is_same_live_process(pid, start + 1));
        assert!(!is_same_live_process(0, start));
    }
}
