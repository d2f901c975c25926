//! A pod's user namespace (`hostUsers: false`): CRI's `UserNamespace` checked and turned into the id maps
//! the pod's pinned user namespace gets (`berth_runtime::pin::UserMappings`). kubelet sends the same options
//! for the sandbox and each of its containers; the container side compares them with the pod's record.

use berth_runtime::pin::{IdMapping, UserMappings};

use crate::cri::v1 as cri;
use crate::pods::{MODE_NODE, MODE_POD, MODE_TARGET};

/// The kernel's limit on lines of a uid_map or gid_map (user_namespaces(7), since Linux 4.15).
const MAX_MAPPINGS: usize = 340;

/// Why a user namespace request was refused: invalid (InvalidArgument) or not built (Unimplemented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsernsProblem {
    Invalid(String),
    Unsupported(String),
}

/// The id maps `options` asks for: None for the host's user namespace (no options, or mode NODE), the
/// checked maps for mode POD.
pub fn mappings(options: Option<&cri::UserNamespace>) -> Result<Option<UserMappings>, UsernsProblem> {
    let Some(options) = options else { return Ok(None) };
    match options.mode {
        MODE_NODE => {
            if !options.uids.is_empty() || !options.gids.is_empty() {
                return Err(UsernsProblem::Invalid(
                    "user namespace mode NODE takes no uid/gid mappings (they are for mode POD)".into(),
                ));
            }
            Ok(None)
        }
        MODE_POD => {
            let uids = checked("uid", &options.uids)?;
            let gids = checked("gid", &options.gids)?;
            Ok(Some(UserMappings { uids, gids }))
        }
        1 => Err(UsernsProblem::Unsupported("user namespace mode CONTAINER (CRI allows only POD and NODE)".into())),
        MODE_TARGET => {
            Err(UsernsProblem::Unsupported("user namespace mode TARGET (CRI allows only POD and NODE)".into()))
        }
        other => Err(UsernsProblem::Invalid(format!("unknown user namespace mode {other}"))),
    }
}

/// Lets a user-namespaced pod's root reach `state` (berth's state directory): adds search permission for
/// others (`o+x`, never read) to `state` and every directory above it that lacks it, as CRI-O does for a
/// user-namespaced container's bundle. A container's init sets up its rootfs and binds the pod's /etc files
/// as the namespace's root, an id that owns nothing of the host's: one 0700 directory above the state
/// directory (a test's `mktemp -d`, an operator's private /run) would refuse every such container. Returns the
/// directories it changed.
pub fn make_searchable(state: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    for directory in state.ancestors() {
        let mode = std::fs::metadata(directory)?.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(directory, std::fs::Permissions::from_mode((mode & 0o7777) | 0o001))?;
            changed.push(directory.to_path_buf());
        }
    }
    Ok(changed)
}

/// The options a pod with these maps reports in PodSandboxStatus (mode POD, the maps as given).
pub fn to_cri(mappings: &UserMappings) -> cri::UserNamespace {
    let back = |maps: &[IdMapping]| {
        maps.iter()
            .map(|m| cri::IdMapping { container_id: m.container_id, host_id: m.host_id, length: m.size })
            .collect()
    };
    cri::UserNamespace { mode: MODE_POD, uids: back(&mappings.uids), gids: back(&mappings.gids) }
}

/// One kind of maps (uids or gids) for mode POD: present, non-empty ranges within 32 bits, no two ranges
/// overlapping inside or outside (the kernel refuses those), and root (0) mapped.
fn checked(what: &str, given: &[cri::IdMapping]) -> Result<Vec<IdMapping>, UsernsProblem> {
    let invalid = |reason: String| Err(UsernsProblem::Invalid(reason));
    if given.is_empty() {
        return invalid(format!("user namespace mode POD needs {what} mappings, and none were given"));
    }
    if given.len() > MAX_MAPPINGS {
        return invalid(format!("{} {what} mappings are more than the kernel's {MAX_MAPPINGS}", given.len()));
    }
    let mut maps = Vec::with_capacity(given.len());
    for m in given {
        let describe = format!("{what} mapping {}→{} (length {})", m.container_id, m.host_id, m.length);
        if m.length == 0 {
            return invalid(format!("{describe} is empty"));
        }
        if u64::from(m.container_id) + u64::from(m.length) > 1 << 32
            || u64::from(m.host_id) + u64::from(m.length) > 1 << 32
        {
            return invalid(format!("{describe} goes past the largest id (4294967295)"));
        }
        maps.push(IdMapping { container_id: m.container_id, host_id: m.host_id, size: m.length });
    }
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            let overlap = |a_start: u32, b_start: u32| {
                u64::from(a_start) < u64::from(b_start) + u64::from(b.size)
                    && u64::from(b_start) < u64::from(a_start) + u64::from(a.size)
            };
            if overlap(a.container_id, b.container_id) {
                return invalid(format!("{what} mappings overlap inside the namespace (at {})", b.container_id));
            }
            if overlap(a.host_id, b.host_id) {
                return invalid(format!("{what} mappings overlap on the host (at {})", b.host_id));
            }
        }
    }
    if !maps.iter().any(|m| m.container_id == 0) {
        return invalid(format!("the {what} mappings do not map the namespace's root ({what} 0)"));
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_becomes_searchable_not_readable_for_a_user_namespaces_root() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let private = temp.path().join("private");
        let state = private.join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711)).unwrap();
        let changed = make_searchable(&state).unwrap();
        assert!(changed.contains(&private), "{changed:?}");
        assert!(!changed.contains(&state), "{changed:?}");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&private), 0o701, "search only, no read for others");
        assert!(make_searchable(&state).unwrap().is_empty(), "a second call changes nothing");
    }

    fn map(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping { container_id, host_id, length }
    }

    fn pod(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace { mode: MODE_POD, uids, gids }
    }

    fn invalid(options: cri::UserNamespace, wanted: &str) {
        match mappings(Some(&options)) {
            Err(UsernsProblem::Invalid(reason)) => assert!(reason.contains(wanted), "{reason:?} lacks {wanted:?}"),
            other => panic!("{options:?} gave {other:?}, not Invalid"),
        }
    }

    #[test]
    fn no_options_and_mode_node_mean_the_hosts_user_namespace() {
        assert_eq!(mappings(None), Ok(None));
        let node = cri::UserNamespace { mode: MODE_NODE, ..Default::default() };
        assert_eq!(mappings(Some(&node)), Ok(None));
    }

    #[test]
    fn mode_pod_with_kubelets_mappings_is_accepted() {
        let options = pod(vec![map(0, 65536 * 5, 65536)], vec![map(0, 65536 * 5, 65536)]);
        let maps = mappings(Some(&options)).unwrap().unwrap();
        assert_eq!(maps.uids, vec![IdMapping { container_id: 0, host_id: 327680, size: 65536 }]);
        assert_eq!(maps.gids, maps.uids);
        assert_eq!(maps.root(), Some((327680, 327680)));
        // Several disjoint ranges are fine too.
        let split = pod(vec![map(0, 3_000_000, 1000), map(1000, 4_000_000, 1000)], vec![map(0, 3_000_000, 2000)]);
        assert_eq!(mappings(Some(&split)).unwrap().unwrap().uids.len(), 2);
    }

    #[test]
    fn mode_pod_needs_both_kinds_of_mappings() {
        invalid(pod(vec![], vec![map(0, 3_000_000, 65536)]), "needs uid mappings");
        invalid(pod(vec![map(0, 3_000_000, 65536)], vec![]), "needs gid mappings");
    }

    #[test]
    fn root_must_be_mapped() {
        invalid(pod(vec![map(1, 3_000_000, 65536)], vec![map(0, 3_000_000, 65536)]), "do not map the namespace's root");
        invalid(pod(vec![map(0, 3_000_000, 65536)], vec![map(1000, 3_000_000, 10)]), "gid 0");
    }

    #[test]
    fn sizes_must_be_sane() {
        invalid(pod(vec![map(0, 3_000_000, 0)], vec![map(0, 3_000_000, 1)]), "is empty");
        invalid(pod(vec![map(0, u32::MAX, 2)], vec![map(0, 3_000_000, 1)]), "past the largest id");
        invalid(pod(vec![map(0, 0, 1), map(u32::MAX, 5, 2)], vec![map(0, 3_000_000, 1)]), "past the largest id");
        let too_many: Vec<_> = (0..341).map(|i| map(i, 3_000_000 + i, 1)).collect();
        invalid(pod(too_many, vec![map(0, 3_000_000, 1)]), "more than the kernel's 340");
    }

    #[test]
    fn ranges_must_not_overlap() {
        invalid(pod(vec![map(0, 3_000_000, 100), map(50, 4_000_000, 100)], vec![map(0, 1, 1)]), "inside");
        invalid(pod(vec![map(0, 3_000_000, 100), map(100, 3_000_050, 100)], vec![map(0, 1, 1)]), "on the host");
    }

    #[test]
    fn other_modes_are_refused() {
        let node_with_maps = cri::UserNamespace { mode: MODE_NODE, uids: vec![map(0, 1, 1)], gids: vec![] };
        invalid(node_with_maps, "mode NODE takes no");
        for mode in [1, MODE_TARGET] {
            let options = cri::UserNamespace { mode, ..Default::default() };
            assert!(matches!(mappings(Some(&options)), Err(UsernsProblem::Unsupported(_))), "mode {mode}");
        }
        invalid(cri::UserNamespace { mode: 7, ..Default::default() }, "unknown user namespace mode 7");
    }
}
