//! Who a container's process runs as: uid, gid and groups from the CRI security context and the image's
//! `User`, with names resolved in the image's /etc/passwd and /etc/group.
//!
//! Those files are image content, so untrusted: they are opened with `openat2(RESOLVE_IN_ROOT)` from the
//! rootfs, which resolves every symlink and `..` as if the rootfs were `/` (a link to the host's
//! /etc/passwd reads the image's own), must be regular files, and are read up to a size limit.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::Problem;
use crate::cri::v1 as cri;

/// Larger account files than this are refused rather than read (real ones are kilobytes).
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

/// The resolved identity of a container's process.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Every group of the process, the primary gid first (containerd's order, which kubelet reports).
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads `relative` (e.g. `etc/passwd`) inside `root` with every path component resolved inside it. None
/// when the file does not exist.
pub(crate) fn read_in_root(root: &Path, relative: &str) -> Result<Option<String>, Problem> {
    let path = root.join(relative);
    let root_dir: OwnedFd =
        nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| Problem::Io { step: "open the rootfs", path: root.into(), source: errno.into() })?;
    // O_NONBLOCK: a FIFO planted at /etc/passwd must not block the open; it is refused below.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(&root_dir, relative, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        Err(errno) => return Err(Problem::Io { step: "open", path, source: errno.into() }),
    };
    let file = std::fs::File::from(fd);
    let metadata = file.metadata().map_err(Problem::io("stat", &path))?;
    if !metadata.is_file() {
        return Err(Problem::Invalid(format!("/{relative} in the image is not a regular file")));
    }
    if metadata.len() > MAX_ACCOUNT_FILE {
        return Err(Problem::Invalid(format!("/{relative} in the image is larger than {MAX_ACCOUNT_FILE} bytes")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ACCOUNT_FILE).read_to_end(&mut bytes).map_err(Problem::io("read", &path))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `name:password:uid:gid:...` lines; malformed lines, comments and NIS `+`/`-` entries are skipped, as
/// libc's and Go's parsers do.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry { name: fields[0].to_owned(), uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? })
        })
        .collect()
}

/// `name:password:gid:member,member` lines.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('+') && !l.starts_with('-'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default();
            Some(GroupEntry { name: fields[0].to_owned(), gid: fields[2].parse().ok()?, members })
        })
        .collect()
}

/// The account files, read once and only when needed.
struct Accounts<'a> {
    root: &'a Path,
    passwd: Option<Vec<PasswdEntry>>,
    group: Option<Vec<GroupEntry>>,
}

impl Accounts<'_> {
    fn passwd(&mut self) -> Result<&[PasswdEntry], Problem> {
        if self.passwd.is_none() {
            let text = read_in_root(self.root, "etc/passwd")?.unwrap_or_default();
            self.passwd = Some(parse_passwd(&text));
        }
        Ok(self.passwd.as_deref().unwrap_or_default())
    }

    fn group(&mut self) -> Result<&[GroupEntry], Problem> {
        if self.group.is_none() {
            let text = read_in_root(self.root, "etc/group")?.unwrap_or_default();
            self.group = Some(parse_group(&text));
        }
        Ok(self.group.as_deref().unwrap_or_default())
    }
}

/// A user or group as asked for: a number, or a name to look up. A name of digits only is a number (as
/// with Docker and containerd).
#[derive(Debug, Clone, PartialEq)]
enum Id {
    Number(u32),
    Name(String),
}

impl Id {
    fn parse(text: &str, what: &str) -> Result<Id, Problem> {
        if text.is_empty() {
            return Err(Problem::Invalid(format!("empty {what} name")));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Id::Number)
                .map_err(|_| Problem::Invalid(format!("{what} id {text} is out of range")));
        }
        Ok(Id::Name(text.to_owned()))
    }
}

fn id_from_cri(value: i64, what: &str) -> Result<u32, Problem> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| Problem::Invalid(format!("{what} {value} is out of range")))
}

/// Resolves the process's identity. The user: `run_as_username`, else `run_as_user`, else the image's
/// `User` (`user`, `uid`, `user:group`, `uid:gid`), else root. The gid: `run_as_group`, else the group of
/// the image's `User`, else the user's primary group in /etc/passwd, else 0. Groups: the primary gid, then
/// (policy Merge, the default) every /etc/group entry listing the user's name, then the CRI's
/// `supplemental_groups`; policy Strict leaves out /etc/group.
///
/// `run_as_group` without `run_as_user` or `run_as_username` is refused, as containerd does and critest
/// checks (kubelet's validation already requires runAsUser with runAsGroup).
pub(crate) fn resolve(
    root: &Path,
    context: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<Identity, Problem> {
    let mut accounts = Accounts { root, passwd: None, group: None };
    if let Some(c) = context
        && c.run_as_group.is_some()
        && c.run_as_user.is_none()
        && c.run_as_username.is_empty()
    {
        return Err(Problem::Invalid("run_as_group is set without run_as_user or run_as_username".into()));
    }
    let (user, image_group) = match context {
        Some(c) if !c.run_as_username.is_empty() => (Id::parse(&c.run_as_username, "user")?, None),
        Some(c) if c.run_as_user.is_some() => {
            (Id::Number(id_from_cri(c.run_as_user.as_ref().map_or(0, |v| v.value), "run_as_user")?), None)
        }
        _ if !image_user.is_empty() => {
            let (user, group) = match image_user.split_once(':') {
                Some((user, group)) => (user, Some(group)),
                None => (image_user, None),
            };
            (Id::parse(user, "user")?, group.map(|g| Id::parse(g, "group")).transpose()?)
        }
        _ => (Id::Number(0), None),
    };

    let (uid, name, primary_gid) = match &user {
        Id::Name(name) => {
            let entry = accounts
                .passwd()?
                .iter()
                .find(|e| e.name == *name)
                .cloned()
                .ok_or_else(|| Problem::NotFound(format!("user {name:?} is not in the image's /etc/passwd")))?;
            (entry.uid, Some(entry.name), entry.gid)
        }
        Id::Number(uid) => match accounts.passwd()?.iter().find(|e| e.uid == *uid) {
            Some(entry) => (*uid, Some(entry.name.clone()), entry.gid),
            None => (*uid, None, 0),
        },
    };

    let gid = match (context.and_then(|c| c.run_as_group.as_ref()), image_group) {
        (Some(group), _) => id_from_cri(group.value, "run_as_group")?,
        (None, Some(Id::Number(gid))) => gid,
        (None, Some(Id::Name(group))) => accounts
            .group()?
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.gid)
            .ok_or_else(|| Problem::NotFound(format!("group {group:?} is not in the image's /etc/group")))?,
        (None, None) => primary_gid,
    };

    let mut groups = vec![gid];
    let strict = context.is_some_and(|c| c.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32);
    if let Some(name) = name.as_ref().filter(|_| !strict) {
        for group in accounts.group()? {
            if group.members.iter().any(|m| m == name) && !groups.contains(&group.gid) {
                groups.push(group.gid);
            }
        }
    }
    for group in context.map(|c| c.supplemental_groups.as_slice()).unwrap_or_default() {
        let group = id_from_cri(*group, "supplemental group")?;
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    Ok(Identity { uid, gid, additional_gids: groups })
}
