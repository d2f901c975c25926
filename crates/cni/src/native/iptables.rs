//! The `ipMasq` rules of the bridge plugin, made and removed as the binary makes them, in two process runs
//! at most instead of about nine (none for a new pod on the nf_tables backend).
//!
//! The binary (containernetworking/plugins `pkg/ip/ipmasq_linux.go`, through go-iptables) runs `iptables`
//! once per step: list the nat chains, create `CNI-<hash>`, then check-and-append each rule. The rules it
//! leaves, per pod address, in the nat table of the address's family:
//!
//! ```text
//! -A POSTROUTING -s <address>/32 -m comment --comment "name: \"<net>\" id: \"<id>\"" -j CNI-<hash>
//! -A CNI-<hash> -d <subnet> -m comment --comment "..." -j ACCEPT
//! -A CNI-<hash> ! -d 224.0.0.0/4 -m comment --comment "..." -j MASQUERADE     (ff00::/8 for IPv6)
//! ```
//!
//! On the nf_tables backend, a new pod's chain, rules and jump are one nf_tables transaction (see
//! `nftables`) once the node's nat table exists. Otherwise, one `iptables-save -t nat` reads the table
//! (skipped when nf_tables says the chain does not exist) and one `iptables-restore --noflush` writes the
//! whole change atomically: the chain is declared (which creates it, or empties an existing one, which is then
//! refilled with its old rules plus the new ones, as appending only-if-missing would leave it), and the
//! POSTROUTING jump is appended unless present. Teardown deletes the jumps the binary would delete (`-s
//! <address>/32`, and `-s <subnet>` of older versions), then flushes and deletes the chain (on the nf_tables
//! backend without a process, see `nftables`). The `iptables` found on PATH is used, as the binary uses it,
//! so the node's choice of the nft or legacy backend holds.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use super::nftables::{Action, AddressMatch, NatRule};

/// Serializes this process's read-modify-write of the nat tables: two pods set up at once must not both
/// see a rule missing and both add it. (Processes outside berth are not covered, as the binaries' own
/// check-then-append is not; shared chains are therefore never declared in a batch, which would empty them,
/// but created on their own with `-N`.)
static NAT_TABLE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `work` while holding [`NAT_TABLE`].
pub(super) fn exclusively<T>(work: impl FnOnce() -> T) -> T {
    let _held = NAT_TABLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    work()
}

/// Creates `chain` in the nat table unless it exists (iptables answers 1 when it does).
pub(super) fn ensure_chain(v6: bool, chain: &str) -> Result<(), String> {
    let program = tool(v6, "");
    let output = Command::new(&program)
        .args(["-t", "nat", "-N", chain, "--wait"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("failed to run {program}: {err}"))?;
    match output.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(format!(
            "running [{program} -t nat -N {chain} --wait]: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// One pod address with its subnet's prefix length, as the IPAM result gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masqueraded {
    pub ip: IpAddr,
    pub prefix: u8,
}

/// The chain the binary names for network `network` and container `container_id` (utils.FormatChainName):
/// `CNI-` and the hex SHA-512 of the two, 28 characters in all.
pub fn chain_name(network: &str, container_id: &str) -> String {
    chain_name_with_prefix("", network, container_id)
}

/// The same with `prefix` after `CNI-` (utils.MustFormatChainNameWithPrefix: portmap's `DN-` and `SN-`).
pub fn chain_name_with_prefix(prefix: &str, network: &str, container_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("CNI-{prefix}{hex}")[..28].to_owned()
}

/// The rules' comment (utils.FormatComment): `name: "<network>" id: "<container id>"`, quoted as Go's %q.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {} id: {}", go_quote(network), go_quote(container_id))
}

/// Go's `%q` for the printable strings network names and container ids are.
fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if c.is_control() => quoted.push_str(&format!("\\x{:02x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A comment as iptables-save prints it, and iptables-restore reads it: in double quotes, `"` and `\`
/// escaped.
pub(super) fn save_quoted(comment: &str) -> String {
    format!("\"{}\"", comment.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Adds the masquerading rules for `addresses` (one family each call is not required: they are grouped).
///
/// A pod's chain that does not exist yet has no rules and nothing jumps to it, so on the nf_tables backend,
/// where asking whether the chain exists costs no process, the first ADD of a pod writes its rules over
/// nf_tables' netlink API in one transaction (see `nftables`), or, where the table has not been made yet,
/// with `iptables-restore` straight away. The table is read, with `iptables-save`, only for a repeated ADD
/// or on the legacy backend.
pub fn set_up(addresses: &[Masqueraded], chain: &str, comment: &str) -> Result<(), String> {
    let nft = super::nftables::nft_backend();
    // None: the chain does not exist (nf_tables said so), so neither do its rules or jumps.
    let read_table = |v6: bool| {
        if nft && !super::nftables::chain_exists(v6, chain)? {
            return Ok(None);
        }
        save(v6).map(Some)
    };
    per_family_read_by(addresses, read_table, |v6, family, saved: Option<String>| {
        let multicast: IpAddr =
            if v6 { Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into() } else { Ipv4Addr::new(224, 0, 0, 0).into() };
        let multicast_prefix = if v6 { 8 } else { 4 };
        let rule = |chain: &str, source: bool, network: IpAddr, prefix: u8, inverted: bool, action: Action| NatRule {
            chain: chain.to_owned(),
            address: AddressMatch { source, network, prefix, inverted },
            comment: comment.to_owned(),
            action,
        };
        let (mut rules, mut jumps) = (Vec::new(), Vec::new());
        for address in family {
            for wanted in [
                rule(chain, false, network_of(address.ip, address.prefix), address.prefix, false, Action::Accept),
                rule(chain, false, multicast, multicast_prefix, true, Action::Masquerade),
            ] {
                if !rules.contains(&wanted) {
                    rules.push(wanted);
                }
            }
            let jump =
                rule("POSTROUTING", true, address.ip, host_prefix(address.ip), false, Action::Jump(chain.to_owned()));
            if !jumps.contains(&jump) {
                jumps.push(jump);
            }
        }
        let Some(saved) = saved else {
            let rules: Vec<NatRule> = rules.into_iter().chain(jumps).collect();
            if super::nftables::append(v6, chain, &rules)? {
                return Ok(());
            }
            return restore(v6, &declaring_batch(chain, rules.iter().map(line)));
        };
        let chain_rule = format!("-A {chain} ");
        let mut lines: Vec<String> =
            saved.lines().filter(|line| line.starts_with(&chain_rule)).map(str::to_owned).collect();
        for wanted in rules.iter().map(line) {
            if !lines.contains(&wanted) {
                lines.push(wanted);
            }
        }
        lines.extend(jumps.iter().map(line).filter(|jump| !saved.lines().any(|line| line == jump)));
        restore(v6, &declaring_batch(chain, lines.into_iter()))
    })
}

/// An `iptables-restore` batch of the nat table that declares `chain` (creating it, or emptying it) and
/// appends `rules`.
fn declaring_batch(chain: &str, rules: impl Iterator<Item = String>) -> String {
    let mut batch = format!("*nat\n:{chain} - [0:0]\n");
    for rule in rules {
        batch.push_str(&rule);
        batch.push('\n');
    }
    batch.push_str("COMMIT\n");
    batch
}

/// `rule` as `iptables-save` prints it.
fn line(rule: &NatRule) -> String {
    let AddressMatch { source, network, prefix, inverted } = rule.address;
    let target = match &rule.action {
        Action::Accept => "ACCEPT",
        Action::Masquerade => "MASQUERADE",
        Action::Jump(chain) => chain,
    };
    format!(
        "-A {} {}{} {network}/{prefix} -m comment --comment {} -j {target}",
        rule.chain,
        if inverted { "! " } else { "" },
        if source { "-s" } else { "-d" },
        save_quoted(&rule.comment)
    )
}

/// Removes what [`set_up`] (or the binary) made for `addresses`; what is already gone is no error.
///
/// On the nf_tables backend through [`nftables`](super::nftables) (no process, no wait at its exit): the
/// POSTROUTING rules that jump to the pod's chain with the pod's comment, then the chain. The binary deletes
/// the jumps it knows by their source (`-s <address>/32`, `-s <subnet>`); a jump to this chain with this
/// comment can only be one of those.
pub fn tear_down(addresses: &[Masqueraded], chain: &str, comment: &str) -> Result<(), String> {
    if super::nftables::nft_backend() {
        return exclusively(|| {
            for v6 in [false, true].into_iter().filter(|v6| addresses.iter().any(|a| a.ip.is_ipv6() == *v6)) {
                let ours = |rule: &super::nftables::Rule| {
                    rule.jump.as_deref() == Some(chain) && rule.comment.as_deref() == Some(comment)
                };
                super::nftables::tear_down(v6, &["POSTROUTING"], ours, &[chain])?;
            }
            Ok(())
        });
    }
    let quoted = save_quoted(comment);
    per_family(addresses, |v6, family, saved| {
        let mut batch = String::from("*nat\n");
        for address in family {
            // The jump from the address, and the one older versions made from the subnet.
            for source in [
                format!("{}/{}", address.ip, host_prefix(address.ip)),
                format!("{}/{}", network_of(address.ip, address.prefix), address.prefix),
            ] {
                let jump = format!("-A POSTROUTING -s {source} -m comment --comment {quoted} -j {chain}");
                if saved.lines().any(|line| line == jump) && !batch.contains(&jump[3..]) {
                    batch.push_str(&format!("-D {}\n", &jump[3..]));
                }
            }
        }
        if chains(saved).contains(&chain) {
            batch.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        if batch.lines().count() == 1 {
            return Ok(());
        }
        batch.push_str("COMMIT\n");
        restore(v6, &batch)
    })
}

/// Runs `work` for each address family of `addresses`, with that family's addresses and its nat table as
/// iptables-save prints it, one family after the other and holding [`NAT_TABLE`].
fn per_family(
    addresses: &[Masqueraded],
    mut work: impl FnMut(bool, &[Masqueraded], &str) -> Result<(), String>,
) -> Result<(), String> {
    per_family_read_by(addresses, save, |v6, family, saved: String| work(v6, family, &saved))
}

/// The same with the table read by `read_table` (which may know that what `work` looks for is absent).
fn per_family_read_by<T>(
    addresses: &[Masqueraded],
    read_table: impl Fn(bool) -> Result<T, String>,
    mut work: impl FnMut(bool, &[Masqueraded], T) -> Result<(), String>,
) -> Result<(), String> {
    exclusively(|| {
        for v6 in [false, true] {
            let family: Vec<Masqueraded> = addresses.iter().copied().filter(|a| a.ip.is_ipv6() == v6).collect();
            if !family.is_empty() {
                work(v6, &family, read_table(v6)?)?;
            }
        }
        Ok(())
    })
}

fn tool(v6: bool, suffix: &str) -> String {
    format!("{}{suffix}", if v6 { "ip6tables" } else { "iptables" })
}

/// The nat table as `iptables-save` prints it (without counters).
pub(super) fn save(v6: bool) -> Result<String, String> {
    let program = tool(v6, "-save");
    let output = Command::new(&program)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("failed to run {program}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "running [{program} -t nat]: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("{program} printed something other than UTF-8"))
}

/// Applies `batch` with `iptables-restore --noflush`, waiting for the xtables lock as go-iptables does.
pub(super) fn restore(v6: bool, batch: &str) -> Result<(), String> {
    let program = tool(v6, "-restore");
    let mut child = Command::new(&program)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("failed to run {program}: {err}"))?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(batch.as_bytes()));
    let output = child.wait_with_output().map_err(|err| format!("failed to wait for {program}: {err}"))?;
    if let Some(Err(err)) = written {
        return Err(format!("failed to write to {program}: {err}"));
    }
    if !output.status.success() {
        return Err(format!(
            "running [{program} -w --noflush]: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    Ok(())
}

/// Runs `iptables` (or `ip6tables`) with `args` and `--wait` as go-iptables does: whether it succeeded, and
/// the error go-iptables reports when not.
pub(super) fn run(v6: bool, args: &[&str]) -> Result<(), String> {
    let program = tool(v6, "");
    let output = Command::new(&program)
        .args(args)
        .arg("--wait")
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("failed to run {program}: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "running [{program} {} --wait]: {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The chains of the nat table in `saved` (iptables-save output).
pub(super) fn chains(saved: &str) -> Vec<&str> {
    saved.lines().filter_map(|line| line.strip_prefix(':')).filter_map(|rest| rest.split(' ').next()).collect()
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `ip` with the host bits of a `/prefix` network cleared, as iptables normalizes a `-d` or `-s` network.
fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            Ipv4Addr::from(u32::from(v4) & mask).into()
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            Ipv6Addr::from(u128::from(v6) & mask).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_and_comment_are_the_binarys() {
        let chain = chain_name("berth", "0123456789abcdef");
        assert_eq!(chain.len(), 28);
        assert!(chain.starts_with("CNI-"));
        assert!(chain[4..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(chain, chain_name("berth", "0123456789abcdeg"));
        assert_eq!(comment("berth", "abc"), r#"name: "berth" id: "abc""#);
        assert_eq!(save_quoted(&comment("b", "c")), r#""name: \"b\" id: \"c\"""#);
    }

    #[test]
    fn networks_are_normalized_as_iptables_prints_them() {
        let network = |ip: &str, prefix| network_of(ip.parse().unwrap(), prefix).to_string();
        assert_eq!(network("10.88.0.5", 16), "10.88.0.0");
        assert_eq!(network("10.88.0.5", 0), "0.0.0.0");
        assert_eq!(network("fd00::1:5", 64), "fd00::");
    }
}
