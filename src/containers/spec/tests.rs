use std::os::unix::fs::symlink;

use berth_image::manifest::{ContainerDefaults, ImageConfig};
use oci_spec::runtime::{Capability, LinuxSeccompAction, Mount, Spec};

use super::*;

/// A pod, a rootfs with account files and the pod's /etc directory, all under one temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    record: PodRecord,
}

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/bin/false
malformed line
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
";

const GROUP: &str = "\
root:x:0:
users:x:100:alice
wheel:x:10:alice,bob
audio:x:29:bob
alice:x:1000:
staff:x:50:
";

const CONTAINER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs/etc")).unwrap();
        std::fs::write(dir.path().join("rootfs/etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("rootfs/etc/group"), GROUP).unwrap();
        std::fs::create_dir_all(dir.path().join("pod/shm")).unwrap();
        std::fs::create_dir_all(dir.path().join("seccomp")).unwrap();
        // From JSON, so fields added to the record later (with serde defaults) need no change here.
        let record: PodRecord = serde_json::from_value(serde_json::json!({
            "id": "f".repeat(64),
            "name": "web",
            "namespace": "default",
            "uid": "pod-uid",
            "attempt": 0,
            "state": "Ready",
            "created_at_unix_nanos": 1,
            "hostname": "web-host",
            "log_directory": "/var/log/pods/x",
            "runtime_handler": "",
            "labels": {},
            "annotations": {},
            "network_mode": 0,
            "pid_mode": 1,
            "ipc_mode": 0,
            "cgroup_parent": "/kubepods/besteffort/podabc",
            "netns": "/run/berth/pods/f/ns/net",
            "ipcns": "/run/berth/pods/f/ns/ipc",
            "utsns": "/run/berth/pods/f/ns/uts",
            "ips": [],
            "network": null,
        }))
        .unwrap();
        Fixture { dir, record }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }
}

fn host() -> HostFacts {
    HostFacts {
        cgroup_v2: true,
        swap_accounting: true,
        apparmor_enabled: false,
        hugetlb: true,
        hostname: "node-1".into(),
    }
}

fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    ImageConfig {
        config: ContainerDefaults {
            entrypoint: entrypoint.map(strings),
            cmd: cmd.map(strings),
            env: vec!["PATH=/image/bin".into(), "IMAGE=1".into(), "SHARED=image".into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn container(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "busybox:latest".into(), ..Default::default() }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn with_context(mut config: cri::ContainerConfig, context: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
    config.linux.get_or_insert_with(Default::default).security_context = Some(context);
    config
}

fn try_build_on(
    fixture: &Fixture,
    config: &cri::ContainerConfig,
    image: &ImageConfig,
    host: &HostFacts,
    pid_namespace: Option<PathBuf>,
) -> Result<BuiltSpec, SpecError> {
    let rootfs = fixture.rootfs();
    let etc = fixture.path("pod");
    let shm = fixture.path("pod/shm");
    let seccomp_root = fixture.path("seccomp");
    let request = SpecRequest {
        container_id: CONTAINER_ID,
        config,
        pod: PodContext { record: &fixture.record, config: None, etc_dir: &etc, shm: Some(&shm), pid_namespace },
        image,
        rootfs: &rootfs,
        cgroup_driver: CgroupDriver::Cgroupfs,
        seccomp_root: &seccomp_root,
        image_volumes: &Default::default(),
        cdi: &[],
    };
    build_with(&request, host).map_err(|p| p.into_error(CONTAINER_ID))
}

fn try_build(fixture: &Fixture, config: &cri::ContainerConfig) -> Result<BuiltSpec, SpecError> {
    try_build_on(fixture, config, &image(Some(&["/entry"]), Some(&["default"])), &host(), None)
}

fn build_ok(fixture: &Fixture, config: &cri::ContainerConfig) -> BuiltSpec {
    try_build(fixture, config).unwrap_or_else(|err| panic!("{}", berth_error_kind::chain(&err)))
}

fn process(spec: &Spec) -> &oci_spec::runtime::Process {
    spec.process().as_ref().unwrap()
}

fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
    spec.linux().as_ref().unwrap()
}

fn mount_at<'a>(spec: &'a Spec, destination: &str) -> &'a Mount {
    let mounts = spec.mounts().as_ref().unwrap();
    let found: Vec<&Mount> = mounts.iter().filter(|m| m.destination() == Path::new(destination)).collect();
    assert_eq!(found.len(), 1, "exactly one mount at {destination}: {mounts:#?}");
    found[0]
}

fn options(mount: &Mount) -> Vec<String> {
    mount.options().clone().unwrap_or_default()
}

fn capability_names(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> =
        set.iter().flatten().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

#[test]
fn command_and_args_follow_the_kubernetes_rules() {
    let fixture = Fixture::new();
    let image = image(Some(&["/entry", "-x"]), Some(&["cmd1", "cmd2"]));
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&[], &[], &["/entry", "-x", "cmd1", "cmd2"]),
        (&[], &["a1"], &["/entry", "-x", "a1"]),
        (&["/bin/sh"], &[], &["/bin/sh"]),
        (&["/bin/sh"], &["-c", "true"], &["/bin/sh", "-c", "true"]),
    ];
    for (command, args, want) in cases {
        let built = try_build_on(&fixture, &container(command, args), &image, &host(), None).unwrap();
        assert_eq!(process(&built.spec).args().as_deref().unwrap(), want, "command {command:?} args {args:?}");
    }
    // Image Cmd without Entrypoint.
    let only_cmd = self::image(None, Some(&["/bin/true"]));
    let built = try_build_on(&fixture, &container(&[], &[]), &only_cmd, &host(), None).unwrap();
    assert_eq!(process(&built.spec).args().as_deref().unwrap(), ["/bin/true"]);
    // Nothing at all.
    let nothing = self::image(None, None);
    let err = try_build_on(&fixture, &container(&[], &[]), &nothing, &host(), None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("no command"), "{err}");
}

#[test]
fn environment_is_image_then_config_with_later_keys_winning_in_place() {
    let fixture = Fixture::new();
    let mut config = container(&["/bin/sh"], &[]);
    config.envs = vec![
        cri::KeyValue { key: "SHARED".into(), value: b"config".to_vec() },
        cri::KeyValue { key: "NEW".into(), value: b"a=b".to_vec() },
    ];
    let built = build_ok(&fixture, &config);
    assert_eq!(
        process(&built.spec).env().as_deref().unwrap(),
        ["PATH=/image/bin", "HOSTNAME=web-host", "IMAGE=1", "SHARED=config", "NEW=a=b"]
    );
    // Without PATH in the image, containerd's default PATH.
    let mut bare = image(Some(&["/entry"]), None);
    bare.config.env.clear();
    let built = try_build_on(&fixture, &config, &bare, &host(), None).unwrap();
    assert!(process(&built.spec).env().as_deref().unwrap()[0].starts_with("PATH=/usr/local/sbin:"));

    config.envs.push(cri::KeyValue { key: "BAD".into(), value: vec![0xff, 0xfe] });
    assert_eq!(try_build(&fixture, &config).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn working_directory_comes_from_the_config_then_the_image_then_root() {
    let fixture = Fixture::new();
    let mut image = image(Some(&["/entry"]), None);
    let built = try_build_on(&fixture, &container(&[], &[]), &image, &host(), None).unwrap();
    assert_eq!(process(&built.spec).cwd(), Path::new("/"));
    image.config.working_dir = "/srv".into();
    let built = try_build_on(&fixture, &container(&[], &[]), &image, &host(), None).unwrap();
    assert_eq!(process(&built.spec).cwd(), Path::new("/srv"));
    let mut config = container(&[], &[]);
    config.working_dir = "/work".into();
    let built = try_build_on(&fixture, &config, &image, &host(), None).unwrap();
    assert_eq!(process(&built.spec).cwd(), Path::new("/work"));
    config.working_dir = "relative".into();
    assert!(try_build_on(&fixture, &config, &image, &host(), None).is_err());
}

fn context() -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext::default()
}

fn resolve(
    fixture: &Fixture,
    context: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
) -> user::Identity {
    user::resolve(&fixture.rootfs(), context, image_user).unwrap_or_else(|p| panic!("{}", p.into_error(CONTAINER_ID)))
}

#[test]
fn users_resolve_from_the_image_user_string() {
    let fixture = Fixture::new();
    let cases = [
        ("", 0, 0, vec![0]),
        ("alice", 1000, 1000, vec![1000, 100, 10]),
        ("1000", 1000, 1000, vec![1000, 100, 10]),
        ("bob", 1001, 100, vec![100, 10, 29]),
        ("alice:staff", 1000, 50, vec![50, 100, 10]),
        ("alice:77", 1000, 77, vec![77, 100, 10]),
        ("1234:5678", 1234, 5678, vec![5678]),
        // A uid without a passwd entry: gid 0, no groups from /etc/group.
        ("4242", 4242, 0, vec![0]),
    ];
    for (image_user, uid, gid, groups) in cases {
        let identity = resolve(&fixture, None, image_user);
        assert_eq!((identity.uid, identity.gid, identity.additional_gids), (uid, gid, groups), "User {image_user:?}");
    }
}

#[test]
fn security_context_users_and_groups_override_the_image() {
    let fixture = Fixture::new();
    let mut c = context();
    c.run_as_user = Some(cri::Int64Value { value: 1001 });
    let identity = resolve(&fixture, Some(&c), "alice");
    assert_eq!((identity.uid, identity.gid), (1001, 100));

    c.run_as_username = "alice".into();
    let identity = resolve(&fixture, Some(&c), "bob");
    assert_eq!((identity.uid, identity.gid), (1000, 1000), "run_as_username wins over run_as_user");

    c.run_as_group = Some(cri::Int64Value { value: 3000 });
    c.supplemental_groups = vec![4000, 10];
    let identity = resolve(&fixture, Some(&c), "");
    assert_eq!(identity.gid, 3000);
    assert_eq!(identity.additional_gids, [3000, 100, 10, 4000], "Merge: image groups then the CRI's");

    c.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    let identity = resolve(&fixture, Some(&c), "");
    assert_eq!(identity.additional_gids, [3000, 4000, 10], "Strict: only the CRI's");

    // run_as_group alone is refused (containerd, critest).
    let mut c = context();
    c.run_as_group = Some(cri::Int64Value { value: 7 });
    assert!(matches!(user::resolve(&fixture.rootfs(), Some(&c), "alice:staff"), Err(Problem::Invalid(_))));

    let mut c = context();
    c.run_as_user = Some(cri::Int64Value { value: -1 });
    assert!(matches!(user::resolve(&fixture.rootfs(), Some(&c), ""), Err(Problem::Invalid(_))));
}

#[test]
fn unknown_users_and_groups_are_not_found() {
    let fixture = Fixture::new();
    for image_user in ["mallory", "alice:nogroup"] {
        let err = user::resolve(&fixture.rootfs(), None, image_user).unwrap_err().into_error(CONTAINER_ID);
        assert_eq!(err.kind(), ErrorKind::NotFound, "{image_user}: {err}");
    }
    let mut c = context();
    c.run_as_username = "mallory".into();
    let err = user::resolve(&fixture.rootfs(), Some(&c), "").unwrap_err().into_error(CONTAINER_ID);
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("mallory"), "{err}");
}

#[test]
fn account_files_are_read_inside_the_rootfs_only() {
    let fixture = Fixture::new();
    // A host file the image points at, absolutely and relatively.
    let outside = fixture.path("outside-passwd");
    std::fs::write(&outside, "mallory:x:0:0::/:/bin/sh\n").unwrap();
    let passwd = fixture.rootfs().join("etc/passwd");
    for target in [outside.clone(), PathBuf::from("../../../../../../../../").join(outside.strip_prefix("/").unwrap())]
    {
        std::fs::remove_file(&passwd).unwrap();
        symlink(&target, &passwd).unwrap();
        let err = user::resolve(&fixture.rootfs(), None, "mallory").unwrap_err().into_error(CONTAINER_ID);
        assert_eq!(err.kind(), ErrorKind::NotFound, "link to {}: {err}", target.display());
    }
    // A link that stays inside the image is followed.
    std::fs::remove_file(&passwd).unwrap();
    std::fs::write(fixture.rootfs().join("etc/passwd.real"), PASSWD).unwrap();
    symlink("/etc/passwd.real", &passwd).unwrap();
    assert_eq!(resolve(&fixture, None, "alice").uid, 1000);
    // A FIFO does not block and is refused.
    std::fs::remove_file(&passwd).unwrap();
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert!(matches!(user::resolve(&fixture.rootfs(), None, "alice"), Err(Problem::Invalid(_))));
    // No passwd at all: numbers still work.
    std::fs::remove_file(&passwd).unwrap();
    assert_eq!(resolve(&fixture, None, "1000").gid, 0);
}

#[test]
fn the_built_spec_reports_the_identity_it_runs_as() {
    let fixture = Fixture::new();
    let mut c = context();
    c.run_as_user = Some(cri::Int64Value { value: 1000 });
    c.supplemental_groups = vec![5000];
    let built = build_ok(&fixture, &with_context(container(&["/bin/sh"], &[]), c));
    assert_eq!((built.uid, built.gid, built.supplemental_groups.clone()), (1000, 1000, vec![1000, 100, 10, 5000]));
    let user = process(&built.spec).user();
    assert_eq!((user.uid(), user.gid()), (1000, 1000));
    assert_eq!(user.additional_gids().as_deref().unwrap(), [1000, 100, 10, 5000]);
}

fn capabilities_of(add: &[&str], drop: &[&str]) -> Vec<String> {
    let mut c = context();
    c.capabilities = Some(cri::Capability {
        add_capabilities: add.iter().map(|s| (*s).to_owned()).collect(),
        drop_capabilities: drop.iter().map(|s| (*s).to_owned()).collect(),
        add_ambient_capabilities: vec![],
    });
    let sets = security::capabilities(Some(&c)).unwrap();
    capability_names(&Some(sets.bounding))
}

#[test]
fn capabilities_start_from_containerds_default_then_add_then_drop() {
    let default = capabilities_of(&[], &[]);
    assert_eq!(default.len(), 14);
    assert!(default.contains(&"CAP_NET_RAW".to_owned()) && !default.contains(&"CAP_SYS_ADMIN".to_owned()));

    let added = capabilities_of(&["SYS_ADMIN", "cap_net_admin"], &["NET_RAW", "CAP_CHOWN"]);
    assert!(added.contains(&"CAP_SYS_ADMIN".to_owned()) && added.contains(&"CAP_NET_ADMIN".to_owned()));
    assert!(!added.contains(&"CAP_NET_RAW".to_owned()) && !added.contains(&"CAP_CHOWN".to_owned()));
    assert_eq!(added.len(), 14);

    let all = capabilities_of(&["ALL"], &[]);
    assert_eq!(all.len(), security::all_capabilities().len());
    assert!(all.len() >= 38, "{all:?}");
    let all_but_chown = capabilities_of(&["all"], &["CHOWN"]);
    assert_eq!(all_but_chown.len(), all.len() - 1);
    assert_eq!(capabilities_of(&["NET_BIND_SERVICE"], &["ALL"]), ["CAP_NET_BIND_SERVICE"]);
    assert!(capabilities_of(&[], &["ALL"]).is_empty());

    let mut c = context();
    c.capabilities = Some(cri::Capability { add_capabilities: vec!["NOT_A_CAP".into()], ..Default::default() });
    assert!(matches!(security::capabilities(Some(&c)), Err(Problem::Invalid(_))));
}

#[test]
fn all_means_what_berth_holds_and_a_capability_it_lacks_is_refused_by_name() {
    let mut held = security::all_capabilities();
    let sys_time = security::parse_capability("SYS_TIME").unwrap();
    let chown = security::parse_capability("CHOWN").unwrap();
    held.remove(&sys_time);
    held.remove(&chown);
    let with = |add: &[&str], privileged: bool| {
        let mut c = context();
        c.privileged = privileged;
        c.capabilities = Some(cri::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
        security::capabilities_from(Some(&c), &held)
    };
    assert_eq!(with(&[], true).unwrap().bounding, held, "privileged");
    assert_eq!(with(&["ALL"], false).unwrap().bounding, held, "add ALL");
    // CHOWN is in containerd's default set: left out, not an error, when berth lacks it.
    let default = with(&[], false).unwrap().bounding;
    assert!(!default.contains(&chown) && default.len() == 13, "{default:?}");
    match with(&["SYS_TIME"], false) {
        Err(Problem::Invalid(message)) => assert!(message.contains("\"SYS_TIME\""), "{message}"),
        other => panic!("asking for a capability berth lacks: {other:?}"),
    }
}

#[test]
fn capability_sets_in_the_spec() {
    let fixture = Fixture::new();
    let mut c = context();
    c.capabilities = Some(cri::Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
        ..Default::default()
    });
    let built = build_ok(&fixture, &with_context(container(&["/bin/sh"], &[]), c));
    let caps = process(&built.spec).capabilities().as_ref().unwrap();
    assert_eq!(capability_names(caps.bounding()), capability_names(caps.effective()));
    assert_eq!(capability_names(caps.bounding()), capability_names(caps.permitted()));
    assert_eq!(capability_names(caps.inheritable()), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(capability_names(caps.ambient()), ["CAP_NET_BIND_SERVICE"]);
    assert!(capability_names(caps.bounding()).contains(&"CAP_NET_ADMIN".to_owned()));

    let built = build_ok(&fixture, &container(&["/bin/sh"], &[]));
    let caps = process(&built.spec).capabilities().as_ref().unwrap();
    assert!(capability_names(caps.inheritable()).is_empty() && capability_names(caps.ambient()).is_empty());
}

#[test]
fn unprivileged_containers_are_confined() {
    let fixture = Fixture::new();
    let built = build_ok(&fixture, &container(&["/bin/sh"], &[]));
    let spec = &built.spec;
    assert!(options(mount_at(spec, "/sys")).contains(&"ro".to_owned()));
    assert!(options(mount_at(spec, "/sys/fs/cgroup")).contains(&"ro".to_owned()));
    assert!(linux(spec).masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_owned()));
    assert!(linux(spec).readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_owned()));
    let rules = linux(spec).resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(!rules[0].allow() && rules[0].typ().is_none(), "deny all first: {rules:?}");
    assert!(rules.iter().skip(1).all(|r| r.allow() && r.typ().is_some()), "{rules:?}");
    assert!(process(spec).no_new_privileges() == Some(false));
    assert!(linux(spec).seccomp().is_none(), "Unconfined is Kubernetes' default");
}

#[test]
fn privileged_containers_get_everything() {
    let fixture = Fixture::new();
    let mut c = context();
    c.privileged = true;
    c.seccomp = Some(cri::SecurityProfile { profile_type: 0, localhost_ref: String::new() });
    c.masked_paths = vec!["/proc/kcore".into()];
    let built = build_ok(&fixture, &with_context(container(&["/bin/sh"], &[]), c.clone()));
    let spec = &built.spec;
    let caps = process(spec).capabilities().as_ref().unwrap();
    let all = capability_names(&Some(security::all_capabilities()));
    assert_eq!(capability_names(caps.bounding()), all);
    assert_eq!(capability_names(caps.effective()), all);
    assert_eq!(capability_names(caps.permitted()), all);
    assert!(options(mount_at(spec, "/sys")).contains(&"rw".to_owned()));
    assert!(options(mount_at(spec, "/sys/fs/cgroup")).contains(&"rw".to_owned()));
    assert!(linux(spec).masked_paths().is_none() && linux(spec).readonly_paths().is_none());
    assert!(linux(spec).seccomp().is_none());
    let rules = linux(spec).resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(rules.iter().any(|r| r.allow() && r.typ().is_none() && r.access().as_deref() == Some("rwm")));
    let devices = linux(spec).devices().clone().unwrap_or_default();
    assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")), "host devices: {devices:?}");
    assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts") && d.path() != Path::new("/dev/console")));
    assert!(
        !linux(spec).namespaces().as_ref().unwrap().iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup),
        "no cgroup namespace for privileged containers"
    );

    // Not in an unprivileged pod.
    let pod_config = cri::PodSandboxConfig {
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext::default()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let config = with_context(container(&["/bin/sh"], &[]), c);
    let image = image(Some(&["/entry"]), None);
    let (rootfs, etc, seccomp_root) = (fixture.rootfs(), fixture.path("pod"), fixture.path("seccomp"));
    let request = SpecRequest {
        container_id: CONTAINER_ID,
        config: &config,
        pod: PodContext {
            record: &fixture.record,
            config: Some(&pod_config),
            etc_dir: &etc,
            shm: None,
            pid_namespace: None,
        },
        image: &image,
        rootfs: &rootfs,
        cgroup_driver: CgroupDriver::Cgroupfs,
        seccomp_root: &seccomp_root,
        image_volumes: &Default::default(),
        cdi: &[],
    };
    let err = build_with(&request, &host()).unwrap_err().into_error(CONTAINER_ID);
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

#[test]
fn masked_and_readonly_paths_default_to_kubelets_or_follow_the_cri() {
    let (masked, readonly) = security::masked_and_readonly_paths(None);
    assert_eq!(masked.len(), 11);
    assert!(masked.contains(&"/sys/devices/virtual/powercap".to_owned()));
    assert_eq!(readonly, ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
    let mut c = context();
    c.masked_paths = vec!["/proc/one".into()];
    c.readonly_paths = vec!["/proc/two".into()];
    let (masked, readonly) = security::masked_and_readonly_paths(Some(&c));
    assert_eq!((masked, readonly), (vec!["/proc/one".to_owned()], vec!["/proc/two".to_owned()]));
}

fn cri_mount(host_path: &Path, container_path: &str, readonly: bool, propagation: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    }
}

#[test]
fn cri_mounts_map_propagation_and_readonly() {
    let fixture = Fixture::new();
    let volume = fixture.path("volume");
    std::fs::create_dir(&volume).unwrap();
    let mut config = container(&["/bin/sh"], &[]);
    config.mounts = vec![
        cri_mount(&volume, "/data/private", false, cri::MountPropagation::PropagationPrivate),
        cri_mount(&volume, "/data/slave", true, cri::MountPropagation::PropagationHostToContainer),
        cri_mount(&volume, "/data/shared", false, cri::MountPropagation::PropagationBidirectional),
    ];
    let built = build_ok(&fixture, &config);
    let spec = &built.spec;
    let want = |destination: &str, propagation: &str, mode: &str| {
        let mount = mount_at(spec, destination);
        assert_eq!(mount.typ().as_deref(), Some("bind"));
        assert_eq!(mount.source().as_deref(), Some(volume.as_path()));
        assert_eq!(options(mount), ["rbind", propagation, mode], "{destination}");
    };
    want("/data/private", "rprivate", "rw");
    want("/data/slave", "rslave", "ro");
    want("/data/shared", "rshared", "rw");
    assert_eq!(linux(spec).rootfs_propagation().as_deref(), Some("rshared"));

    config.mounts.pop();
    assert_eq!(linux(&build_ok(&fixture, &config).spec).rootfs_propagation().as_deref(), Some("rslave"));
    config.mounts.pop();
    assert_eq!(linux(&build_ok(&fixture, &config).spec).rootfs_propagation().as_deref(), None);
}

#[test]
fn recursive_read_only_needs_readonly_and_private() {
    let fixture = Fixture::new();
    let volume = fixture.path("volume");
    std::fs::create_dir(&volume).unwrap();
    let mut config = container(&["/bin/sh"], &[]);
    let mut mount = cri_mount(&volume, "/data", true, cri::MountPropagation::PropagationPrivate);
    mount.recursive_read_only = true;
    config.mounts = vec![mount.clone()];
    assert_eq!(options(mount_at(&build_ok(&fixture, &config).spec, "/data")), ["rbind", "rprivate", "rro"]);

    mount.readonly = false;
    config.mounts = vec![mount.clone()];
    assert_eq!(try_build(&fixture, &config).unwrap_err().kind(), ErrorKind::InvalidArgument);
    mount.readonly = true;
    mount.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    config.mounts = vec![mount];
    assert_eq!(try_build(&fixture, &config).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn pod_files_shm_and_overrides() {
    let fixture = Fixture::new();
    let mut config = container(&["/bin/sh"], &[]);
    let built = build_ok(&fixture, &config);
    for (destination, file) in
        [("/etc/hostname", "hostname"), ("/etc/hosts", "hosts"), ("/etc/resolv.conf", "resolv.conf")]
    {
        let mount = mount_at(&built.spec, destination);
        assert_eq!(mount.source().as_deref(), Some(fixture.path("pod").join(file).as_path()));
        assert!(options(mount).contains(&"rw".to_owned()));
    }
    assert_eq!(mount_at(&built.spec, "/dev/shm").source().as_deref(), Some(fixture.path("pod/shm").as_path()));

    // A CRI mount of /etc/hosts replaces the pod's; a missing host path is created; deeper paths come later.
    let custom = fixture.path("custom/hosts-dir");
    config.mounts = vec![
        cri_mount(&fixture.path("deep"), "/a/b/c", false, cri::MountPropagation::PropagationPrivate),
        cri_mount(&custom, "/etc/hosts", true, cri::MountPropagation::PropagationPrivate),
        cri_mount(&fixture.path("shallow"), "/a", false, cri::MountPropagation::PropagationPrivate),
    ];
    let mut c = context();
    c.readonly_rootfs = true;
    let built = build_ok(&fixture, &with_context(config, c));
    assert!(custom.is_dir(), "missing host path created");
    assert_eq!(mount_at(&built.spec, "/etc/hosts").source().as_deref(), Some(custom.as_path()));
    assert!(options(mount_at(&built.spec, "/etc/resolv.conf")).contains(&"ro".to_owned()), "ro with a ro rootfs");
    assert_eq!(built.spec.root().as_ref().unwrap().readonly(), Some(true));
    let order: Vec<&Path> = built.spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().as_path()).collect();
    let position = |p: &str| order.iter().position(|d| *d == Path::new(p)).unwrap();
    assert!(position("/proc") < position("/a") && position("/a") < position("/a/b/c"), "{order:?}");
    assert!(position("/etc/hosts") < position("/a/b/c"));

    // A symlinked host path is resolved.
    let link = fixture.path("link");
    symlink(fixture.path("shallow"), &link).unwrap();
    let mut config = container(&["/bin/sh"], &[]);
    config.mounts = vec![cri_mount(&link, "/l", false, cri::MountPropagation::PropagationPrivate)];
    let built = build_ok(&fixture, &config);
    assert_eq!(mount_at(&built.spec, "/l").source().as_deref(), Some(fixture.path("shallow").as_path()));
}

#[test]
fn host_ipc_binds_the_hosts_shm() {
    let fixture = Fixture::new();
    let config = container(&["/bin/sh"], &[]);
    let image = image(Some(&["/entry"]), None);
    let (rootfs, etc, seccomp_root) = (fixture.rootfs(), fixture.path("pod"), fixture.path("seccomp"));
    let request = SpecRequest {
        container_id: CONTAINER_ID,
        config: &config,
        pod: PodContext { record: &fixture.record, config: None, etc_dir: &etc, shm: None, pid_namespace: None },
        image: &image,
        rootfs: &rootfs,
        cgroup_driver: CgroupDriver::Systemd,
        seccomp_root: &seccomp_root,
        image_volumes: &Default::default(),
        cdi: &[],
    };
    let built = build_with(&request, &host()).unwrap();
    assert_eq!(mount_at(&built.spec, "/dev/shm").source().as_deref(), Some(Path::new("/dev/shm")));
    assert_eq!(linux(&built.spec).cgroups_path().as_deref(), Some(Path::new(&format!("podabc:berth:{CONTAINER_ID}"))));
}

fn namespace_entries(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    linux(spec).namespaces().as_ref().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect()
}

#[test]
fn namespaces_follow_the_pod_and_the_pid_mode() {
    let mut fixture = Fixture::new();
    let built = build_ok(&fixture, &container(&["/bin/sh"], &[]));
    let entries = namespace_entries(&built.spec);
    assert!(entries.contains(&(LinuxNamespaceType::Mount, None)));
    assert!(entries.contains(&(LinuxNamespaceType::Network, Some("/run/berth/pods/f/ns/net".into()))));
    assert!(entries.contains(&(LinuxNamespaceType::Ipc, Some("/run/berth/pods/f/ns/ipc".into()))));
    assert!(entries.contains(&(LinuxNamespaceType::Uts, Some("/run/berth/pods/f/ns/uts".into()))));
    assert!(entries.contains(&(LinuxNamespaceType::Pid, None)), "CONTAINER: a new PID namespace");
    assert!(entries.contains(&(LinuxNamespaceType::Cgroup, None)));
    assert_eq!(built.spec.hostname().as_deref(), Some("web-host"));

    // POD: the holder's namespace.
    let mut c = context();
    c.namespace_options = Some(cri::NamespaceOption { pid: MODE_POD, ..Default::default() });
    let config = with_context(container(&["/bin/sh"], &[]), c);
    let image = image(Some(&["/entry"]), None);
    let holder = PathBuf::from("/proc/4242/ns/pid");
    let built = try_build_on(&fixture, &config, &image, &host(), Some(holder.clone())).unwrap();
    assert!(namespace_entries(&built.spec).contains(&(LinuxNamespaceType::Pid, Some(holder))));
    assert!(try_build_on(&fixture, &config, &image, &host(), None).is_err(), "POD without a namespace to join");

    // NODE: no PID entry; host network, IPC and UTS: no entries, no hostname; cgroup v1: no cgroup namespace.
    let mut c = context();
    c.namespace_options =
        Some(cri::NamespaceOption { pid: MODE_NODE, network: MODE_NODE, ipc: MODE_NODE, ..Default::default() });
    fixture.record.netns = None;
    fixture.record.ipcns = None;
    fixture.record.utsns = None;
    let v1 = HostFacts { cgroup_v2: false, ..host() };
    let built = try_build_on(&fixture, &with_context(container(&["/bin/sh"], &[]), c), &image, &v1, None).unwrap();
    assert_eq!(namespace_entries(&built.spec), [(LinuxNamespaceType::Mount, None)]);
    assert_eq!(built.spec.hostname(), &None);
    assert!(process(&built.spec).env().as_deref().unwrap().contains(&"HOSTNAME=node-1".to_owned()));
}

#[test]
fn cgroups_paths_for_both_drivers() {
    let id = "abc";
    assert_eq!(cgroups_path("/kubepods/burstable/pod1", id, CgroupDriver::Cgroupfs), "/kubepods/burstable/pod1/abc");
    assert_eq!(cgroups_path("/kubepods/burstable/pod1/", id, CgroupDriver::Cgroupfs), "/kubepods/burstable/pod1/abc");
    assert_eq!(cgroups_path("kubepods", id, CgroupDriver::Cgroupfs), "/kubepods/abc");
    assert_eq!(cgroups_path("", id, CgroupDriver::Cgroupfs), "/berth/abc");
    assert_eq!(
        cgroups_path("kubepods-burstable-pod1.slice", id, CgroupDriver::Systemd),
        "kubepods-burstable-pod1.slice:berth:abc"
    );
    assert_eq!(
        cgroups_path(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
            id,
            CgroupDriver::Systemd
        ),
        "kubepods-burstable-pod1.slice:berth:abc"
    );
    assert_eq!(cgroups_path("", id, CgroupDriver::Systemd), "system.slice:berth:abc");
}

#[test]
fn stop_signal_comes_from_the_config_then_the_image() {
    let fixture = Fixture::new();
    let mut image = image(Some(&["/entry"]), None);
    let mut config = container(&[], &[]);
    assert_eq!(try_build_on(&fixture, &config, &image, &host(), None).unwrap().stop_signal, 15);
    image.config.stop_signal = "SIGQUIT".into();
    assert_eq!(try_build_on(&fixture, &config, &image, &host(), None).unwrap().stop_signal, 3);
    config.stop_signal = cri::Signal::Sigint as i32;
    assert_eq!(try_build_on(&fixture, &config, &image, &host(), None).unwrap().stop_signal, 2);
}

#[test]
fn resources_follow_containerd() {
    let fixture = Fixture::new();
    let mut config = container(&["/bin/sh"], &[]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 5000,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![cri::HugepageLimit { page_size: "2MB".into(), limit: 1 << 21 }],
            unified: [("memory.high".to_owned(), "50000000".to_owned())].into_iter().collect(),
            ..Default::default()
        }),
        security_context: None,
    });
    let built = build_ok(&fixture, &config);
    let resources = linux(&built.spec).resources().as_ref().unwrap();
    let cpu = resources.cpu().as_ref().unwrap();
    assert_eq!((cpu.period(), cpu.quota(), cpu.shares()), (Some(100_000), Some(50_000), Some(512)));
    assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
    let memory = resources.memory().as_ref().unwrap();
    assert_eq!((memory.limit(), memory.swap()), (Some(64 << 20), Some(64 << 20)), "no swapping by default");
    assert_eq!(resources.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
    assert_eq!(resources.unified().as_ref().unwrap()["memory.high"], "50000000");
    assert_eq!(process(&built.spec).oom_score_adj(), Some(1000), "clamped");

    let image = image(Some(&["/entry"]), None);
    let no_swap = HostFacts { swap_accounting: false, ..host() };
    let built = try_build_on(&fixture, &config, &image, &no_swap, None).unwrap();
    assert_eq!(linux(&built.spec).resources().as_ref().unwrap().memory().as_ref().unwrap().swap(), None);

    // kubelet sends huge page limits whether or not the node mounts the hugetlb controller.
    let no_hugetlb = HostFacts { hugetlb: false, ..host() };
    let built = try_build_on(&fixture, &config, &image, &no_hugetlb, None).unwrap();
    assert!(linux(&built.spec).resources().as_ref().unwrap().hugepage_limits().is_none());

    config.linux.as_mut().unwrap().resources.as_mut().unwrap().memory_swap_limit_in_bytes = 128 << 20;
    let built = build_ok(&fixture, &config);
    assert_eq!(linux(&built.spec).resources().as_ref().unwrap().memory().as_ref().unwrap().swap(), Some(128 << 20));
}

#[test]
fn cri_devices_become_nodes_and_rules() {
    let fixture = Fixture::new();
    let mut config = container(&["/bin/sh"], &[]);
    config.devices = vec![cri::Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let built = build_ok(&fixture, &config);
    let nodes = linux(&built.spec).devices().clone().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!((nodes[0].path().as_path(), nodes[0].major(), nodes[0].minor()), (Path::new("/dev/mynull"), 1, 3));
    let rules = linux(&built.spec).resources().as_ref().unwrap().devices().clone().unwrap();
    let last = rules.last().unwrap();
    assert_eq!(
        (last.allow(), last.major(), last.minor(), last.access().as_deref()),
        (true, Some(1), Some(3), Some("rw"))
    );

    config.devices[0].permissions = "rwx".into();
    assert_eq!(try_build(&fixture, &config).unwrap_err().kind(), ErrorKind::InvalidArgument);
    config.devices[0].permissions = "r".into();
    config.devices[0].host_path = "/dev/does-not-exist".into();
    assert_eq!(try_build(&fixture, &config).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn annotations_add_the_cri_keys() {
    let fixture = Fixture::new();
    let mut config = container(&["/bin/sh"], &[]);
    config.annotations.insert("user".into(), "value".into());
    let built = build_ok(&fixture, &config);
    let annotations = built.spec.annotations().clone().unwrap();
    assert_eq!(annotations["user"], "value");
    assert_eq!(annotations["io.kubernetes.cri.container-type"], "container");
    assert_eq!(annotations["io.kubernetes.cri.sandbox-id"], "f".repeat(64));
    assert_eq!(annotations["io.kubernetes.cri.container-name"], "app");
    assert_eq!(annotations["io.kubernetes.cri.image-name"], "busybox:latest");
}

fn seccomp_context(profile_type: i32, localhost_ref: &str) -> cri::LinuxContainerSecurityContext {
    let mut c = context();
    c.seccomp = Some(cri::SecurityProfile { profile_type, localhost_ref: localhost_ref.into() });
    c
}

#[test]
fn seccomp_profiles_by_field_and_by_deprecated_string() {
    let fixture = Fixture::new();
    let runtime_default = build_ok(&fixture, &with_context(container(&["/bin/sh"], &[]), seccomp_context(0, "")));
    let profile = linux(&runtime_default.spec).seccomp().clone().unwrap();
    assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(profile.default_errno_ret(), Some(1));
    assert!(
        build_ok(&fixture, &with_context(container(&["/bin/sh"], &[]), seccomp_context(1, "")))
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .seccomp()
            .is_none()
    );

    let local = fixture.path("seccomp/profile.json");
    std::fs::write(
        &local,
        r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    for reference in [local.to_string_lossy().into_owned(), "profile.json".into()] {
        let built = build_ok(&fixture, &with_context(container(&["/bin/sh"], &[]), seccomp_context(2, &reference)));
        assert_eq!(linux(&built.spec).seccomp().as_ref().unwrap().default_action(), LinuxSeccompAction::ScmpActLog);
    }
    let missing = try_build(&fixture, &with_context(container(&["/bin/sh"], &[]), seccomp_context(2, "/nope.json")));
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    std::fs::write(
        &local,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#,
    )
    .unwrap();
    let conditional =
        try_build(&fixture, &with_context(container(&["/bin/sh"], &[]), seccomp_context(2, "profile.json")));
    assert_eq!(conditional.unwrap_err().kind(), ErrorKind::InvalidArgument);

    #[allow(deprecated)]
    let deprecated = |path: &str| {
        let mut c = context();
        c.seccomp_profile_path = path.into();
        try_build(&fixture, &with_context(container(&["/bin/sh"], &[]), c))
            .map(|b| b.spec.linux().as_ref().unwrap().seccomp().as_ref().map(|s| s.default_action()))
    };
    assert_eq!(deprecated("runtime/default").unwrap(), Some(LinuxSeccompAction::ScmpActErrno));
    assert_eq!(deprecated("docker/default").unwrap(), Some(LinuxSeccompAction::ScmpActErrno));
    assert_eq!(deprecated("unconfined").unwrap(), None);
    assert_eq!(deprecated("").unwrap(), None);
    assert_eq!(deprecated("weird").unwrap_err().kind(), ErrorKind::InvalidArgument);
}

fn allowed_names(profile: &oci_spec::runtime::LinuxSeccomp) -> Vec<String> {
    profile
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
        .flat_map(|r| r.names().clone())
        .collect()
}

#[test]
fn runtime_default_grants_guarded_syscalls_only_with_their_capability() {
    let default_caps = security::capabilities(None).unwrap().bounding;
    let profile = seccomp::runtime_default(&default_caps).unwrap();
    let names = allowed_names(&profile);
    for expected in ["read", "write", "execve", "openat", "ptrace", "chroot", "futex", "epoll_wait"] {
        assert!(names.contains(&expected.to_owned()), "{expected} allowed by default");
    }
    for refused in [
        "mount",
        "umount2",
        "setns",
        "unshare",
        "reboot",
        "init_module",
        "kexec_load",
        "bpf",
        "keyctl",
        "add_key",
        "clock_settime",
        "clone",
    ] {
        assert!(!names.contains(&refused.to_owned()), "{refused} refused by default");
    }
    let rules = profile.syscalls().clone().unwrap();
    let clone = rules.iter().find(|r| r.names() == &["clone"]).unwrap();
    assert_eq!(clone.args().as_ref().unwrap()[0].value(), 0x7E02_0000);
    let clone3 = rules.iter().find(|r| r.names() == &["clone3"]).unwrap();
    assert_eq!((clone3.action(), clone3.errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));
    assert_eq!(rules.iter().filter(|r| r.names() == &["personality"]).count(), 5);

    let mut with_admin = default_caps.clone();
    with_admin.extend([Capability::SysAdmin, Capability::SysModule, Capability::SysTime, Capability::SysPtrace]);
    let profile = seccomp::runtime_default(&with_admin).unwrap();
    let names = allowed_names(&profile);
    for granted in ["mount", "setns", "unshare", "clone", "clone3", "init_module", "clock_settime", "kcmp"] {
        assert!(names.contains(&granted.to_owned()), "{granted} with its capability");
    }
    assert!(!profile.syscalls().as_ref().unwrap().iter().any(|r| r.args().is_some() && r.names() == &["clone"]));
}

/// Compiles a profile with the host's libseccomp the way `berth_runtime`'s seccomp module does (names it does
/// not know skipped), and returns the names it did not know.
fn compile_with_libseccomp(profile: &oci_spec::runtime::LinuxSeccomp) -> Vec<String> {
    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let action = |action: LinuxSeccompAction, errno: Option<u32>| match action {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(1) as i32),
        other => panic!("unexpected action {other:?}"),
    };
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut filter = ScmpFilterContext::new(default).unwrap();
    for arch in profile.architectures().iter().flatten() {
        let arch = match arch {
            oci_spec::runtime::Arch::ScmpArchX86_64 => ScmpArch::X8664,
            oci_spec::runtime::Arch::ScmpArchX86 => ScmpArch::X86,
            oci_spec::runtime::Arch::ScmpArchX32 => ScmpArch::X32,
            oci_spec::runtime::Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
            oci_spec::runtime::Arch::ScmpArchArm => ScmpArch::Arm,
            _ => ScmpArch::Native,
        };
        let _ = filter.add_arch(arch);
    }
    let mut unknown = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let conditions: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    oci_spec::runtime::LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    oci_spec::runtime::LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    oci_spec::runtime::LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
                    other => panic!("unexpected operator {other:?}"),
                };
                let value =
                    if matches!(op, ScmpCompareOp::MaskedEqual(_)) { a.value_two().unwrap_or(0) } else { a.value() };
                ScmpArgCompare::new(a.index() as u32, op, value)
            })
            .collect();
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                unknown.push(name.clone());
                continue;
            };
            let rule_action = action(rule.action(), rule.errno_ret());
            let result = if conditions.is_empty() {
                filter.add_rule(rule_action, syscall)
            } else {
                filter.add_rule_conditional(rule_action, syscall, &conditions)
            };
            result.unwrap_or_else(|err| panic!("libseccomp refused the rule for {name}: {err}"));
        }
    }
    unknown
}

#[test]
fn runtime_default_compiles_with_the_hosts_libseccomp() {
    let mut every_capability = security::all_capabilities();
    for capabilities in [security::capabilities(None).unwrap().bounding, std::mem::take(&mut every_capability)] {
        let profile = seccomp::runtime_default(&capabilities).unwrap();
        let unknown = compile_with_libseccomp(&profile);
        // Only syscalls newer than the libseccomp of the test machines (2.5.4) may be unknown; anything else is
        // a typo in the lists.
        let newer = ["cachestat", "fchmodat2", "futex_requeue", "futex_wait", "futex_wake", "map_shadow_stack"];
        let typos: Vec<&String> = unknown.iter().filter(|n| !newer.contains(&n.as_str())).collect();
        assert!(typos.is_empty(), "names libseccomp does not know: {typos:?}");
    }
}

#[test]
fn the_spec_round_trips_through_json() {
    let fixture = Fixture::new();
    let mut c = seccomp_context(0, "");
    c.run_as_user = Some(cri::Int64Value { value: 1000 });
    let mut config = with_context(container(&["/bin/sh"], &["-c", "true"]), c);
    config.tty = true;
    let built = build_ok(&fixture, &config);
    let json = serde_json::to_string(&built.spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, built.spec);
    assert_eq!(process(&back).terminal(), Some(true));
    assert_eq!(back.root().as_ref().unwrap().path(), &fixture.rootfs());
    assert_eq!(back.version(), berth_runtime::OCI_VERSION);
    assert_eq!(
        linux(&back).cgroups_path().as_deref(),
        Some(Path::new(&format!("/kubepods/besteffort/podabc/{CONTAINER_ID}")))
    );
    let rlimits = process(&back).rlimits().clone().unwrap();
    assert_eq!(rlimits[0].soft(), rlimits[0].hard());
    assert!(rlimits[0].hard() > 0 && rlimits[0].hard() <= 1_048_576);
}

#[test]
fn apparmor_without_apparmor_on_the_host() {
    let mut c = context();
    c.apparmor = Some(cri::SecurityProfile { profile_type: 0, localhost_ref: String::new() });
    assert_eq!(security::apparmor_profile(Some(&c), false, false).unwrap(), None);
    c.apparmor = Some(cri::SecurityProfile { profile_type: 2, localhost_ref: "my-profile".into() });
    assert!(matches!(security::apparmor_profile(Some(&c), false, false), Err(Problem::Invalid(_))));
    assert_eq!(security::apparmor_profile(Some(&c), false, true).unwrap().as_deref(), Some("my-profile"));
    c.apparmor = Some(cri::SecurityProfile { profile_type: 1, localhost_ref: String::new() });
    assert_eq!(security::apparmor_profile(Some(&c), false, true).unwrap(), None);
}

fn userns_pod(fixture: &mut Fixture) -> berth_runtime::pin::UserMappings {
    let map = |host_id| vec![berth_runtime::pin::IdMapping { container_id: 0, host_id, size: 65536 }];
    let mappings = berth_runtime::pin::UserMappings { uids: map(3_000_000), gids: map(3_000_000) };
    fixture.record.userns = Some(PathBuf::from("/run/berth/pods/f/ns/user"));
    fixture.record.user_mappings = Some(mappings.clone());
    mappings
}

fn userns_context(options: Option<cri::UserNamespace>) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        // PID mode CONTAINER (1): the proto default, POD, would need the shim's holder.
        namespace_options: Some(cri::NamespaceOption { pid: 1, userns_options: options, ..Default::default() }),
        ..Default::default()
    }
}

fn cri_userns(host_id: u32) -> cri::UserNamespace {
    let map = vec![cri::IdMapping { container_id: 0, host_id, length: 65536 }];
    cri::UserNamespace { mode: MODE_POD, uids: map.clone(), gids: map }
}

#[test]
fn containers_of_a_userns_pod_join_its_user_namespace_first_with_its_maps() {
    let mut fixture = Fixture::new();
    userns_pod(&mut fixture);
    let volume = fixture.path("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let mut config = with_context(container(&["sh"], &[]), userns_context(Some(cri_userns(3_000_000))));
    config.mounts = vec![cri_mount(&volume, "/data", false, cri::MountPropagation::PropagationPrivate)];
    let built = build_ok(&fixture, &config);
    let linux = linux(&built.spec);
    let namespaces = linux.namespaces().as_ref().unwrap();
    let user: Vec<_> = namespaces.iter().filter(|ns| ns.typ() == LinuxNamespaceType::User).collect();
    assert_eq!(user.len(), 1, "{namespaces:?}");
    assert_eq!(user[0].path().as_deref(), Some(Path::new("/run/berth/pods/f/ns/user")));
    let uids = linux.uid_mappings().as_ref().unwrap();
    assert_eq!((uids[0].container_id(), uids[0].host_id(), uids[0].size()), (0, 3_000_000, 65536));
    assert_eq!(linux.gid_mappings().as_ref().unwrap().len(), 1);
    // Volumes are idmapped through the pod's namespace; the pod's own /etc files are not (they are chowned).
    assert!(options(mount_at(&built.spec, "/data")).contains(&"ridmap".to_owned()));
    assert!(!options(mount_at(&built.spec, "/etc/hosts")).iter().any(|o| o.contains("idmap")));
    // Absent options mean the pod's.
    assert!(try_build(&fixture, &container(&["sh"], &[])).is_ok());
}

#[test]
fn a_containers_user_namespace_must_be_its_pods() {
    let mut fixture = Fixture::new();
    let refused = |fixture: &Fixture, options: cri::UserNamespace| {
        let config = with_context(container(&["sh"], &[]), userns_context(Some(options)));
        try_build(fixture, &config).unwrap_err()
    };
    // A pod without one.
    let err = refused(&fixture, cri_userns(3_000_000));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("has the host's user namespace"), "{err}");
    userns_pod(&mut fixture);
    // Other maps, or the host's.
    let err = refused(&fixture, cri_userns(4_000_000));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = refused(&fixture, cri::UserNamespace { mode: crate::pods::MODE_NODE, ..Default::default() });
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains(CONTAINER_ID) && err.to_string().contains(&"f".repeat(64)), "{err}");
    let err = refused(&fixture, cri::UserNamespace { mode: MODE_TARGET, ..Default::default() });
    assert_eq!(err.kind(), ErrorKind::Unimplemented, "{err}");
    // A mount's own maps are accepted only when they are the pod's.
    let volume = fixture.path("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let mut mount = cri_mount(&volume, "/data", false, cri::MountPropagation::PropagationPrivate);
    mount.uid_mappings = cri_userns(3_000_000).uids;
    mount.gid_mappings = cri_userns(3_000_000).gids;
    let mut config = container(&["sh"], &[]);
    config.mounts = vec![mount.clone()];
    assert!(try_build(&fixture, &config).is_ok());
    mount.uid_mappings = cri_userns(4_000_000).uids;
    config.mounts = vec![mount];
    assert_eq!(try_build(&fixture, &config).unwrap_err().kind(), ErrorKind::Unimplemented);
}
