//! The systemd cgroup driver: a cgroup is a transient scope unit that systemd itself creates and removes
//! (`StartTransientUnit` / `StopUnit` over D-Bus), so the service manager knows every container, accounts
//! for it, and never treats its directories as strays. This is what runc's systemd driver does for
//! containerd and CRI-O, and what kubelet's systemd driver expects of the runtime.
//!
//! A scope is started with the container's first process (the init helper, before it does anything),
//! `Delegate=yes` (the directories below it are the runtime's), `DefaultDependencies=no` (not ordered
//! against the node's shutdown as a service would be) and the resource limits systemd understands; the
//! caller then writes every limit to the cgroup files as well, as runc does, so controllers systemd does
//! not manage (cpuset, hugetlb, the devices rules, ...) are set too.
//!
//! systemd is reached on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`), as
//! runc and kubelet reach it. Not on its private socket: systemd sends messages there with a well-known
//! name as sender, which zbus 5 takes for a broken message (a panic in its reader, so every call would
//! hang). Each call waits for its job's `JobRemoved` signal, so the cgroup exists (or is gone) when the
//! call returns.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_lite::StreamExt;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::error::{Result, RuntimeError};

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long a job may take (runc waits 30 s too); a scope normally starts in a millisecond or two.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// A container's scope unit and the slice it is placed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// `<prefix>-<name>.scope`.
    pub unit: String,
    /// The parent slice, as systemd names it (`kubepods-burstable-pod12.slice`); `system.slice` when none.
    pub slice: String,
}

impl Scope {
    /// The scope of a systemd-style `cgroupsPath` (`slice:prefix:name`), or None for a cgroupfs path.
    pub fn of_cgroups_path(cgroups_path: &Path) -> Option<Scope> {
        let text = cgroups_path.to_str()?;
        if text.starts_with('/') {
            return None;
        }
        let [slice, prefix, name] = text.split(':').collect::<Vec<_>>()[..] else { return None };
        // A parent given as a path names the slice by its last component.
        let slice = slice.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("system.slice");
        let unit = if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") };
        Some(Scope { unit, slice: slice.to_owned() })
    }

    /// Asks systemd to start the scope with `pid` in it and the limits of `resources` it understands, and
    /// waits until it runs. A scope of the same name left by an earlier failed attempt is stopped first.
    pub fn start(&self, pid: i32, resources: Option<&LinuxResources>, v2: bool) -> Result<()> {
        let limits = resources.map(|r| unit_limits(r, v2)).unwrap_or_default();
        let attempt = |limits: &[(&'static str, Value<'static>)]| {
            let mut properties = self.base_properties(pid, v2);
            properties.extend(limits.iter().map(|(k, v)| (*k, v.try_clone().expect("plain values clone"))));
            call_job(&self.unit, "StartTransientUnit", &(&self.unit, "replace", properties, Vec::<Aux>::new()))
        };
        match attempt(&limits) {
            Err(Failure::Method(name, _)) if name.ends_with(".UnitExists") => {
                // A scope that failed keeps its name until reset. One still running (the scope of a shim
                // that died, restarted beside what it left) is joined, as existing cgroupfs directories are:
                // the caller moves the process into its directories.
                let _ = call(&self.unit, "ResetFailedUnit", &(&self.unit,));
                match attempt(&limits) {
                    Err(Failure::Method(name, _)) if name.ends_with(".UnitExists") => {
                        tracing::debug!(unit = %self.unit, "the scope exists; joining it");
                        Ok(())
                    }
                    other => other,
                }
            }
            // A systemd older or newer than the properties named (MemoryLimit= went away with cgroup v1 in
            // systemd 256, say): start it without them; the cgroup files written afterwards hold the limits.
            Err(Failure::Method(name, message))
                if !limits.is_empty() && (name.ends_with(".InvalidArgs") || name.ends_with(".PropertyReadOnly")) =>
            {
                tracing::debug!(unit = %self.unit, %message, "systemd refused a resource property; the limits are written to the cgroup only");
                attempt(&[])
            }
            other => other,
        }
        .map_err(|failure| failure.into_error(&self.unit, "StartTransientUnit"))
    }

    /// Changes the limits systemd keeps for the scope (so a `daemon-reload` does not put old ones back).
    pub fn set_limits(&self, resources: &LinuxResources, v2: bool) -> Result<()> {
        let limits = unit_limits(resources, v2);
        if limits.is_empty() {
            return Ok(());
        }
        match call(&self.unit, "SetUnitProperties", &(&self.unit, true, limits)) {
            Ok(_) => Ok(()),
            Err(Failure::Method(name, message)) if name.ends_with(".InvalidArgs") => {
                tracing::debug!(unit = %self.unit, %message, "systemd refused a resource property; the limits are written to the cgroup only");
                Ok(())
            }
            Err(failure) => Err(failure.into_error(&self.unit, "SetUnitProperties")),
        }
    }

    /// Stops the scope (systemd kills what is left in it and removes its cgroup) and waits; a scope that
    /// is already gone is fine.
    pub fn stop(&self) -> Result<()> {
        match call_job(&self.unit, "StopUnit", &(&self.unit, "replace")) {
            Ok(()) => {}
            Err(Failure::Method(name, _)) if name.ends_with(".NoSuchUnit") => {}
            Err(failure) => return Err(failure.into_error(&self.unit, "StopUnit")),
        }
        // A scope whose processes were killed ends "failed" and would keep its name until reset.
        let _ = call(&self.unit, "ResetFailedUnit", &(&self.unit,));
        Ok(())
    }

    /// The cgroup path systemd gives the scope: the slice's ancestors, the slice, the scope
    /// (systemd.slice(5): dashes in a slice name denote its parents).
    pub fn cgroup_path(&self) -> Result<PathBuf> {
        let Some(stem) = self.slice.strip_suffix(".slice") else {
            return Err(RuntimeError::CgroupSetup(format!("systemd cgroup parent {:?} is not a .slice", self.slice)));
        };
        let mut path = PathBuf::from("/");
        if stem != "-" {
            let mut parent = String::new();
            for part in stem.split('-') {
                if part.is_empty() {
                    return Err(RuntimeError::CgroupSetup(format!("invalid systemd slice name {:?}", self.slice)));
                }
                if !parent.is_empty() {
                    parent.push('-');
                }
                parent.push_str(part);
                path.push(format!("{parent}.slice"));
            }
        }
        path.push(&self.unit);
        Ok(path)
    }

    /// What `systemctl status` shows: whose scope it is.
    fn description(&self) -> String {
        let name = self.unit.trim_end_matches(".scope");
        match name.strip_prefix("berth-shim-") {
            Some(pod) => format!("berth shim of pod {pod}"),
            None => format!("berth container {}", name.strip_prefix("berth-").unwrap_or(name)),
        }
    }

    fn base_properties(&self, pid: i32, v2: bool) -> Vec<(&'static str, Value<'static>)> {
        let io_accounting = if v2 { "IOAccounting" } else { "BlockIOAccounting" };
        vec![
            ("Description", Value::from(self.description())),
            ("Slice", Value::from(self.slice.clone())),
            ("PIDs", Value::from(vec![pid as u32])),
            ("Delegate", Value::from(true)),
            ("DefaultDependencies", Value::from(false)),
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
            (io_accounting, Value::from(true)),
        ]
    }
}

/// StartTransientUnit's auxiliary units (none).
type Aux = (String, Vec<(String, Value<'static>)>);

/// The limits of `resources` as unit properties, in the names of the cgroup version in use. What systemd
/// has no property for is left to the cgroup files.
fn unit_limits(resources: &LinuxResources, v2: bool) -> Vec<(&'static str, Value<'static>)> {
    // -1 (and anything negative) means no limit; systemd's "infinity" is u64::MAX.
    let limit = |value: i64| if value < 0 { u64::MAX } else { value as u64 };
    let mut properties = Vec::new();
    if let Some(bytes) = resources.memory().as_ref().and_then(|m| m.limit()).filter(|&b| b != 0) {
        properties.push((if v2 { "MemoryMax" } else { "MemoryLimit" }, Value::from(limit(bytes))));
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
            if v2 {
                properties.push(("CPUWeight", Value::from(1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142)));
            } else {
                properties.push(("CPUShares", Value::from(shares)));
            }
        }
        if let (Some(quota), period) = (cpu.quota().filter(|&q| q != 0), cpu.period().unwrap_or(100_000).max(1)) {
            let per_second = if quota < 0 {
                u64::MAX
            } else {
                // systemd keeps the quota in 10 ms steps of a second; round up, as runc does, so a small
                // quota never becomes no CPU at all.
                (quota as u64 * 1_000_000 / period).div_ceil(10_000) * 10_000
            };
            properties.push(("CPUQuotaPerSecUSec", Value::from(per_second)));
            if period != 100_000 {
                properties.push(("CPUQuotaPeriodUSec", Value::from(period)));
            }
        }
    }
    if let Some(pids) = resources.pids().as_ref().map(|p| p.limit()).filter(|&p| p != 0) {
        properties.push(("TasksMax", Value::from(limit(pids))));
    }
    properties
}

/// How a call failed: systemd answered with an error, the connection broke (worth one more try on a new
/// one), or anything else (unreachable, a job that failed or timed out).
enum Failure {
    Method(String, String),
    Broken(String),
    Other(String),
}

impl Failure {
    fn into_error(self, unit: &str, call: &'static str) -> RuntimeError {
        let message = match self {
            Failure::Method(name, message) => format!("{name}: {message}"),
            Failure::Broken(message) | Failure::Other(message) => message,
        };
        RuntimeError::Systemd { unit: unit.to_owned(), call, message }
    }
}

impl From<zbus::Error> for Failure {
    fn from(err: zbus::Error) -> Failure {
        match err {
            zbus::Error::MethodError(name, message, _) => {
                Failure::Method(name.to_string(), message.unwrap_or_default())
            }
            zbus::Error::InputOutput(err) => Failure::Broken(err.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// The process's connection to systemd, made on first use (the async executor threads zbus starts exist
/// only in processes that use this driver) and made again when it breaks (systemd re-executed, say).
static CONNECTION: Mutex<Option<Connection>> = Mutex::new(None);

#[derive(Clone)]
struct Connection {
    inner: zbus::Connection,
}

fn connection() -> std::result::Result<Connection, Failure> {
    let mut cached = CONNECTION.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(connection) = cached.as_ref() {
        return Ok(connection.clone());
    }
    let connection = async_io::block_on(connect())?;
    *cached = Some(connection.clone());
    Ok(connection)
}

async fn connect() -> std::result::Result<Connection, Failure> {
    let inner = zbus::Connection::system().await.map_err(|err| {
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".to_owned());
        Failure::Other(format!("systemd cannot be reached over the system bus ({address}): {err}"))
    })?;
    let connection = Connection { inner };
    // systemd sends JobRemoved only to clients that subscribed.
    connection.call("Subscribe", &()).await?;
    Ok(connection)
}

impl Connection {
    async fn call<B>(&self, method: &str, body: &B) -> std::result::Result<zbus::Message, Failure>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        Ok(self.inner.call_method(Some(DESTINATION), MANAGER_PATH, Some(MANAGER), method, body).await?)
    }
}

/// Calls a Manager method, once more on a new connection if the cached one broke.
fn call<B>(unit: &str, method: &str, body: &B) -> std::result::Result<zbus::Message, Failure>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let connection = connection()?;
    match async_io::block_on(connection.call(method, body)) {
        Err(Failure::Broken(message)) => {
            tracing::debug!(unit, method, %message, "the connection to systemd broke; connecting again");
            async_io::block_on(connection_again()?.call(method, body))
        }
        result => result,
    }
}

fn forget_connection() {
    *CONNECTION.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
}

fn connection_again() -> std::result::Result<Connection, Failure> {
    forget_connection();
    connection()
}

/// Calls a Manager method that returns a job and waits for the job to finish; a job that ends other than
/// "done" is a failure naming its result.
fn call_job<B>(unit: &str, method: &str, body: &B) -> std::result::Result<(), Failure>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let run = |connection: Connection| {
        async_io::block_on(async move {
            // Listening starts before the call, so a job that finishes at once is not missed.
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface(MANAGER)
                .and_then(|b| b.member("JobRemoved"))
                .map_err(Failure::from)?
                .build();
            let mut removed =
                zbus::MessageStream::for_match_rule(rule, &connection.inner, None).await.map_err(Failure::from)?;
            let reply = connection.call(method, body).await?;
            let job: OwnedObjectPath = reply.body().deserialize()?;
            let finished = async {
                while let Some(message) = removed.next().await {
                    let Ok(message) = message else { continue };
                    let Ok((_, path, _, result)) =
                        message.body().deserialize::<(u32, OwnedObjectPath, String, String)>()
                    else {
                        continue;
                    };
                    if path == job {
                        return if result == "done" {
                            Ok(())
                        } else {
                            Err(Failure::Other(format!("job {} ended with result {result:?}", job.as_str())))
                        };
                    }
                }
                Err(Failure::Broken("the connection to systemd closed while waiting for the job".into()))
            };
            let timeout = async {
                async_io::Timer::after(JOB_TIMEOUT).await;
                Err(Failure::Other(format!("job {} did not finish in {} s", job.as_str(), JOB_TIMEOUT.as_secs())))
            };
            futures_lite::future::or(finished, timeout).await
        })
    };
    match run(connection()?) {
        Err(Failure::Broken(message)) => {
            tracing::debug!(unit, method, %message, "the connection to systemd broke; connecting again");
            run(connection_again()?)
        }
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroups_paths_name_a_scope_in_a_slice() {
        let scope = Scope::of_cgroups_path(Path::new("kubepods-burstable-pod12.slice:berth:abc")).unwrap();
        assert_eq!(scope.unit, "berth-abc.scope");
        assert_eq!(scope.slice, "kubepods-burstable-pod12.slice");
        assert_eq!(
            scope.cgroup_path().unwrap(),
            Path::new("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/berth-abc.scope")
        );
        let root = Scope::of_cgroups_path(Path::new("-.slice::abc")).unwrap();
        assert_eq!((root.unit.as_str(), root.cgroup_path().unwrap()), ("abc.scope", PathBuf::from("/abc.scope")));
        let default = Scope::of_cgroups_path(Path::new(":berth:abc")).unwrap();
        assert_eq!(default.cgroup_path().unwrap(), Path::new("/system.slice/berth-abc.scope"));
        let from_path = Scope::of_cgroups_path(Path::new("/kubepods.slice/kubepods-pod1.slice:berth:x"));
        assert_eq!(from_path, None, "an absolute path is a cgroupfs path");
        let nested = Scope::of_cgroups_path(Path::new("kubepods.slice/kubepods-pod1.slice:berth:x")).unwrap();
        assert_eq!(nested.slice, "kubepods-pod1.slice");
        assert_eq!(Scope::of_cgroups_path(Path::new("kubepods/pod1/abc")), None);
        let bad = Scope { unit: "x.scope".into(), slice: "kubepods--pod.slice".into() };
        assert!(bad.cgroup_path().is_err());
        let not_a_slice = Scope { unit: "x.scope".into(), slice: "kubepods".into() };
        assert!(not_a_slice.cgroup_path().is_err());
    }

    #[test]
    fn limits_become_the_properties_of_the_cgroup_version() {
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 134217728},
            "cpu": {"shares": 512, "quota": 25000, "period": 100000},
            "pids": {"limit": 64}
        }))
        .unwrap();
        let names = |v2| unit_limits(&resources, v2).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        // systemd takes every one of these as a uint64 ("t"), and refuses any other type.
        assert_eq!(
            names(false),
            [
                "MemoryLimit=uint64 134217728",
                "CPUShares=uint64 512",
                "CPUQuotaPerSecUSec=uint64 250000",
                "TasksMax=uint64 64"
            ]
        );
        assert_eq!(
            names(true),
            [
                "MemoryMax=uint64 134217728",
                "CPUWeight=uint64 20",
                "CPUQuotaPerSecUSec=uint64 250000",
                "TasksMax=uint64 64"
            ]
        );

        let odd: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": -1},
            "cpu": {"quota": 1000, "period": 50000},
            "pids": {"limit": -1}
        }))
        .unwrap();
        let odd = unit_limits(&odd, false).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        let infinity = u64::MAX.to_string();
        assert_eq!(
            odd,
            [
                format!("MemoryLimit=uint64 {infinity}"),
                "CPUQuotaPerSecUSec=uint64 20000".to_owned(),
                "CPUQuotaPeriodUSec=uint64 50000".to_owned(),
                format!("TasksMax=uint64 {infinity}"),
            ]
        );
        assert!(unit_limits(&LinuxResources::default(), true).is_empty());
    }
}
