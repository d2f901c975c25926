//! Deleting the nat rules and chains of bridge and portmap through nf_tables' netlink API, on a socket the
//! process keeps open, when the node's `iptables` is the nf_tables backend (`iptables -V` says
//! `nf_tables`: Debian 11 and later, RHEL 8 and later, and the distributions that follow them).
//!
//! Why not `iptables-restore` as for adding: when a netfilter netlink socket is released, nf_tables first
//! finishes destroying what earlier commits removed (`nft_rcv_nl_event` flushes its deferred destroy work),
//! and that waits for an RCU grace period, 10-20 ms on a node. A commit that deletes rules leaves such work,
//! so an `iptables-restore` that deletes pays the wait when it exits, in every pod's DEL; one that adds
//! leaves none (2 ms in all). Here one socket per network namespace stays open for the life of the process:
//! a deletion costs its commit (0.2 ms), and the kernel frees what it removed in its own worker.
//!
//! Adding the rules of a pod whose chain does not exist yet goes the same way ([`append`]), written in
//! iptables-nft's own encoding so that `iptables-save`, `iptables -D` and the binaries read them as theirs:
//! an address match is a `payload` load of the header field's bytes that the prefix covers whole (with a
//! `bitwise` mask over the whole field when the prefix ends inside a byte) and a `cmp`, `-m comment` is the
//! xtables `comment` match (`struct xt_comment_info`, 256 bytes), each rule carries a `counter`, `-j CHAIN`
//! and `-j ACCEPT` are `immediate` verdicts and `-j MASQUERADE` is the xtables target with iptables' default
//! range. Only what exists is written to: a table or a POSTROUTING chain that iptables has not made yet is
//! left to `iptables-restore`, which makes them as iptables-nft does.
//!
//! What is deleted is what the restore batch deleted, read back from the kernel as iptables-nft wrote it: a
//! rule's jump is an `immediate` expression with a jump verdict, its `-m comment` a `match` expression named
//! `comment` whose info is the NUL-padded text. The rules a caller selects and the chains it names (each
//! flushed, then deleted) go in one nf_tables transaction, applied whole or not at all as the restore was.

use std::net::IpAddr;
use std::sync::{Mutex, OnceLock, PoisonError};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate,
    ListAttribute, NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink::{Channel, NetlinkError, errno_text};

/// `NFNL_SUBSYS_NFTABLES`: the subsystem a batch's begin and end markers name.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The `match` expression's name, revision and info attributes (`NFTA_MATCH_NAME`, ...); a `target`'s are
/// numbered the same.
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_REV: u16 = 2;
const NFTA_MATCH_INFO: u16 = 3;
/// The `counter` expression's attributes (`NFTA_COUNTER_BYTES`, `NFTA_COUNTER_PACKETS`).
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// `NFT_PAYLOAD_NETWORK_HEADER`: a payload offset counts from the IP header.
const NETWORK_HEADER: u32 = 1;
/// `NF_ACCEPT`, the verdict code of `-j ACCEPT`.
const NF_ACCEPT: u32 = 1;
/// `XT_MAX_COMMENT_LEN`: the size of `struct xt_comment_info`, the text and its NUL padding.
const COMMENT_INFO_LEN: usize = 256;
/// How often a teardown is tried again when a rule it read vanished before its commit (another writer).
const ATTEMPTS: usize = 3;
const TABLE: &str = "nat";

/// The nat table of one family (`v6`): its netlink family, and its name as `nft` writes it, for errors.
fn nat_table(v6: bool) -> (NetfilterProtoFamily, &'static str) {
    if v6 { (NetfilterProtoFamily::IPv6, "ip6 nat") } else { (NetfilterProtoFamily::IPv4, "ip nat") }
}

/// Whether the `iptables` on PATH writes through nf_tables; asked once per process, as the node's choice of
/// backend does not change under a running daemon.
pub(super) fn nft_backend() -> bool {
    static NFT: OnceLock<bool> = OnceLock::new();
    *NFT.get_or_init(|| {
        let version = std::process::Command::new("iptables").arg("-V").stdin(std::process::Stdio::null()).output();
        let nft = version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("nf_tables"));
        tracing::debug!(
            nft,
            "iptables backend: nat rules are deleted {}",
            if nft { "through nf_tables" } else { "with iptables-restore" }
        );
        nft
    })
}

/// A rule of the nat table as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    pub chain: String,
    pub handle: u64,
    /// The chain it jumps to (`-j CHAIN`).
    pub jump: Option<String>,
    /// Its `-m comment --comment` text.
    pub comment: Option<String>,
}

/// Deletes, in the nat table of one family (`v6`), the rules of chains `from` that `select` picks, and
/// flushes and deletes those of `chains` that exist, in one transaction. Nothing there is no error.
pub(super) fn tear_down(
    v6: bool,
    from: &[&str],
    select: impl Fn(&Rule) -> bool,
    chains: &[&str],
) -> Result<(), String> {
    let (family, table) = nat_table(v6);
    with_host_socket(|channel| {
        for attempt in 1..=ATTEMPTS {
            let mut deletions: Vec<(String, NfTablesMessage, u16)> = Vec::new();
            for chain in from {
                let rules =
                    rules(channel, family, chain).map_err(|err| format!("nf_tables: list {table} {chain}: {err}"))?;
                for rule in rules.into_iter().filter(|rule| select(rule)) {
                    let what = format!("delete rule {} of {table} {}", rule.handle, rule.chain);
                    deletions.push((what, delete_rules(&rule.chain, Some(rule.handle)), 0));
                }
            }
            for chain in chains {
                if !exists(channel, family, chain).map_err(|err| format!("nf_tables: get {table} {chain}: {err}"))? {
                    continue;
                }
                deletions.push((format!("flush {table} {chain}"), delete_rules(chain, None), 0));
                deletions.push((
                    format!("delete chain {table} {chain}"),
                    NfTablesMessage::DeleteChain(ChainMessage {
                        attributes: vec![
                            ChainAttribute::Table(TABLE.to_owned()),
                            ChainAttribute::Name((*chain).to_owned()),
                        ],
                    }),
                    0,
                ));
            }
            if deletions.is_empty() {
                return Ok(());
            }
            match commit(channel, family, deletions) {
                Ok(()) => return Ok(()),
                // A rule read above was deleted by another writer before the commit: read again.
                Err((Some(libc::ENOENT), _)) if attempt < ATTEMPTS => continue,
                Err((_, err)) => return Err(err),
            }
        }
        unreachable!("the last attempt returns")
    })
}

/// A rule of the nat table to append, as iptables would write `-A <chain> [!] -s|-d <network> -m comment
/// --comment <comment> -j <action>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NatRule {
    pub chain: String,
    pub address: AddressMatch,
    pub comment: String,
    pub action: Action,
}

/// `[!] -s|-d <network>/<prefix>`; the network's host bits are clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AddressMatch {
    pub source: bool,
    pub network: IpAddr,
    pub prefix: u8,
    pub inverted: bool,
}

/// What a [`NatRule`] does with a packet it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    Accept,
    Masquerade,
    Jump(String),
}

/// Creates `new_chain` in the nat table of one family (`v6`) and appends `rules`, in one transaction. The
/// caller has found `new_chain` absent ([`chain_exists`]) while holding [`super::iptables::exclusively`].
///
/// `Ok(false)` (nothing done) when the table or its POSTROUTING chain does not exist yet: the caller then
/// uses `iptables-restore`, which makes them as iptables-nft does. Also `Ok(false)` for a rule iptables
/// would write differently (a `/0` network, which iptables leaves out of the rule).
pub(super) fn append(v6: bool, new_chain: &str, rules: &[NatRule]) -> Result<bool, String> {
    let (family, table) = nat_table(v6);
    if rules.iter().any(|rule| rule.address.prefix == 0 || rule.address.network.is_ipv6() != v6) {
        return Ok(false);
    }
    with_host_socket(|channel| {
        let postrouting = exists(channel, family, "POSTROUTING")
            .map_err(|err| format!("nf_tables: get {table} POSTROUTING: {err}"))?;
        if !postrouting {
            return Ok(false);
        }
        let mut changes = vec![(
            format!("add chain {table} {new_chain}"),
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(new_chain.to_owned())],
            }),
            NLM_F_CREATE,
        )];
        for rule in rules {
            changes.push((
                format!("append a rule to {table} {}", rule.chain),
                NfTablesMessage::NewRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(TABLE.to_owned()),
                        RuleAttribute::Chain(rule.chain.clone()),
                        RuleAttribute::Expressions(expressions(rule)),
                    ],
                }),
                NLM_F_CREATE | NLM_F_APPEND,
            ));
        }
        commit(channel, family, changes).map(|()| true).map_err(|(_, err)| err)
    })
}

/// The expressions iptables-nft writes for `rule`.
fn expressions(rule: &NatRule) -> Vec<ListAttribute<ExpressionAttribute>> {
    let AddressMatch { source, network, prefix, inverted } = rule.address;
    let (offset, bytes) = match network {
        IpAddr::V4(ip) => (if source { 12 } else { 16 }, ip.octets().to_vec()),
        IpAddr::V6(ip) => (if source { 8 } else { 24 }, ip.octets().to_vec()),
    };
    let mask = prefix_mask(bytes.len(), prefix);
    // iptables (add_addr): compare only the whole bytes the prefix covers, or mask the whole field when it
    // ends inside a byte.
    let whole = mask.iter().take_while(|byte| **byte == 0xff).count();
    let partial = mask[whole..].iter().any(|byte| *byte != 0);
    let len = if partial { bytes.len() } else { whole };
    let mut list: Vec<ListAttribute<ExpressionAttribute>> = vec![
        Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(NETWORK_HEADER),
            Payload::Offset(offset),
            Payload::Len(len as u32),
        ])
        .into(),
    ];
    let compared: Vec<u8> = bytes.iter().zip(&mask).take(len).map(|(byte, mask)| byte & mask).collect();
    if partial {
        list.push(
            Expressions::Bitwise(vec![
                Bitwise::SourceRegister(Register::Reg1),
                Bitwise::DestinationRegister(Register::Reg1),
                Bitwise::Length(len as u32),
                Bitwise::Mask(DataAttribute::Value(mask)),
                Bitwise::Xor(DataAttribute::Value(vec![0; len])),
            ])
            .into(),
        );
    }
    list.push(
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(if inverted { Operator::NotEqual } else { Operator::Equal }),
            Cmp::Data(DataAttribute::Value(compared)),
        ])
        .into(),
    );
    let mut comment = rule.comment.as_bytes().to_vec();
    comment.resize(COMMENT_INFO_LEN, 0);
    list.push(xtables("match", "comment", comment));
    list.push(
        Expressions::Other {
            expression_type: "counter".to_owned(),
            attributes: vec![
                DefaultNla::new(NFTA_COUNTER_BYTES, 0u64.to_be_bytes().to_vec()),
                DefaultNla::new(NFTA_COUNTER_PACKETS, 0u64.to_be_bytes().to_vec()),
            ],
        }
        .into(),
    );
    list.push(match &rule.action {
        Action::Accept => verdict(vec![VerdictAttribute::Code(Verdict::Other(NF_ACCEPT))]),
        Action::Jump(chain) => {
            verdict(vec![VerdictAttribute::Code(Verdict::Jump), VerdictAttribute::Chain(chain.clone())])
        }
        Action::Masquerade => xtables("target", "MASQUERADE", masquerade_info(network.is_ipv6())),
    });
    list
}

/// `prefix` leading one bits over `len` bytes.
fn prefix_mask(len: usize, prefix: u8) -> Vec<u8> {
    (0..len)
        .map(|index| {
            let bits = usize::from(prefix).saturating_sub(index * 8).min(8);
            (0xff_u16 << (8 - bits)) as u8
        })
        .collect()
}

/// An xtables `match` or `target` expression (`kind`) run through nft_compat, revision 0, with `info` as
/// the extension's own structure.
fn xtables(kind: &str, name: &str, info: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    let mut name = name.as_bytes().to_vec();
    name.push(0);
    Expressions::Other {
        expression_type: kind.to_owned(),
        attributes: vec![
            DefaultNla::new(NFTA_MATCH_NAME, name),
            DefaultNla::new(NFTA_MATCH_REV, 0u32.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_MATCH_INFO, info),
        ],
    }
    .into()
}

/// The info of `-j MASQUERADE` without options, as iptables passes it: for IPv4 `struct
/// nf_nat_ipv4_multi_range_compat` with one empty range (`rangesize` 1), padded to 8 bytes; for IPv6 an
/// empty `struct nf_nat_range`.
fn masquerade_info(v6: bool) -> Vec<u8> {
    if v6 {
        vec![0; 40]
    } else {
        let mut info = 1u32.to_ne_bytes().to_vec();
        info.resize(24, 0);
        info
    }
}

/// An `immediate` expression setting the verdict register.
fn verdict(verdict: Vec<VerdictAttribute>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(verdict)),
    ])
    .into()
}

/// Applies `changes` (what each is, for an error; the message; its flags) in one nf_tables transaction.
/// On failure: the errno of the kernel's refusal, if it was one, and the error naming the change refused.
fn commit(
    channel: &mut Channel,
    family: NetfilterProtoFamily,
    changes: Vec<(String, NfTablesMessage, u16)>,
) -> Result<(), (Option<i32>, String)> {
    let mut described = Vec::with_capacity(changes.len());
    let mut requests = vec![message(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES, ControlMessage::BatchBegin)];
    for (what, change, flags) in changes {
        described.push(what);
        let mut request = message(family, 0, change);
        request.header.flags = flags;
        requests.push(request);
    }
    requests.push(message(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES, ControlMessage::BatchEnd));
    channel.batch("nf_tables batch", requests).map_err(|(index, err)| {
        let what = index.checked_sub(1).and_then(|i| described.get(i)).map_or("commit", String::as_str);
        let why = err.errno().map_or_else(|| err.to_string(), errno_text);
        (err.errno(), format!("nf_tables: {what}: {why}"))
    })
}

/// `NFT_MSG_DELRULE` in the nat table: the rule `handle` of `chain`, or without a handle every rule of it.
fn delete_rules(chain: &str, handle: Option<u64>) -> NfTablesMessage {
    let mut attributes = vec![RuleAttribute::Table(TABLE.to_owned()), RuleAttribute::Chain(chain.to_owned())];
    attributes.extend(handle.map(RuleAttribute::Handle));
    NfTablesMessage::DeleteRule(RuleMessage { attributes })
}

/// Whether `chain` exists in the nat table of one family (`v6`).
pub(super) fn chain_exists(v6: bool, chain: &str) -> Result<bool, String> {
    let (family, table) = nat_table(v6);
    with_host_socket(|channel| {
        exists(channel, family, chain).map_err(|err| format!("nf_tables: get {table} {chain}: {err}"))
    })
}

/// The socket of the calling thread's network namespace (the daemon's own, in the daemon), opened on first
/// use and then kept: releasing it is what would wait. Callers take turns; the nat table's writers are
/// serialized by [`super::iptables::exclusively`] anyway.
fn with_host_socket<T>(work: impl FnOnce(&mut Channel) -> Result<T, String>) -> Result<T, String> {
    static SOCKET: Mutex<Option<(u64, Channel)>> = Mutex::new(None);
    let namespace = rustix::fs::stat("/proc/thread-self/ns/net")
        .map_err(|errno| format!("stat /proc/thread-self/ns/net: {errno}"))?
        .st_ino;
    let mut slot = SOCKET.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.as_ref().is_none_or(|(opened_in, _)| *opened_in != namespace) {
        // A thread of another namespace (tests run each in one of their own): that namespace's socket.
        *slot = None;
        let channel =
            Channel::open(NETLINK_NETFILTER).map_err(|err| format!("open a netfilter netlink socket: {err}"))?;
        *slot = Some((namespace, channel));
    }
    let (_, channel) = slot.as_mut().expect("opened above");
    work(channel)
}

/// The rules of `chain` in the nat table of `family`; none when the table or the chain does not exist.
fn rules(channel: &mut Channel, family: NetfilterProtoFamily, chain: &str) -> Result<Vec<Rule>, NetlinkError> {
    let request = message(
        family,
        0,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(TABLE.to_owned()), RuleAttribute::Chain(chain.to_owned())],
        }),
    );
    let answers = match channel.exchange("NFT_MSG_GETRULE", request, NLM_F_DUMP) {
        Ok((answers, _)) => answers,
        Err(err) if err.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    Ok(answers
        .into_iter()
        .filter_map(|answer| match answer.inner {
            NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)) => read_rule(rule),
            _ => None,
        })
        .collect())
}

/// Whether `chain` exists in the nat table of `family`.
fn exists(channel: &mut Channel, family: NetfilterProtoFamily, chain: &str) -> Result<bool, NetlinkError> {
    let request = message(
        family,
        0,
        NfTablesMessage::GetChain(ChainMessage {
            attributes: vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(chain.to_owned())],
        }),
    );
    match channel.exchange("NFT_MSG_GETCHAIN", request, NLM_F_ACK) {
        Ok(_) => Ok(true),
        Err(err) if err.errno() == Some(libc::ENOENT) => Ok(false),
        Err(err) => Err(err),
    }
}

/// The parts of a rule message a teardown selects by; `None` without a chain or a handle.
fn read_rule(message: RuleMessage) -> Option<Rule> {
    let (mut chain, mut handle, mut jump, mut comment) = (None, None, None, None);
    for attribute in message.attributes {
        match attribute {
            RuleAttribute::Chain(name) => chain = Some(name),
            RuleAttribute::Handle(value) => handle = Some(value),
            RuleAttribute::Expressions(expressions) => {
                for data in expressions.into_iter().filter_map(expression_data) {
                    match data {
                        Expressions::Immediate(parts) => jump = jump.or_else(|| jump_target(&parts)),
                        Expressions::Other { expression_type, attributes } if expression_type == "match" => {
                            comment = comment.or_else(|| comment_text(&attributes));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Rule { chain: chain?, handle: handle?, jump, comment })
}

/// An expression's type-specific data.
fn expression_data(expression: ListAttribute<ExpressionAttribute>) -> Option<Expressions> {
    let ListAttribute::Element(parts) = expression else { return None };
    parts.into_iter().find_map(|part| match part {
        ExpressionAttribute::Data(data) => Some(data),
        _ => None,
    })
}

/// The chain an `immediate` expression jumps to.
fn jump_target(parts: &[Immediate]) -> Option<String> {
    parts.iter().find_map(|part| match part {
        Immediate::Data(DataAttribute::Verdict(verdict)) => {
            let jumps = verdict.iter().any(|v| matches!(v, VerdictAttribute::Code(Verdict::Jump)));
            verdict.iter().find_map(|v| match v {
                VerdictAttribute::Chain(chain) if jumps => Some(chain.clone()),
                _ => None,
            })
        }
        _ => None,
    })
}

/// The text of a `comment` match: its info is `struct xt_comment_info`, the text NUL-padded.
fn comment_text(attributes: &[DefaultNla]) -> Option<String> {
    let value = |kind: u16| {
        attributes.iter().find(|a| a.kind() == kind).map(|a| {
            let mut bytes = vec![0; a.value_len()];
            a.emit_value(&mut bytes);
            bytes
        })
    };
    let until_nul =
        |bytes: Vec<u8>| bytes.split(|b| *b == 0).next().map(|text| String::from_utf8_lossy(text).into_owned());
    (until_nul(value(NFTA_MATCH_NAME)?)?.as_str() == "comment").then(|| until_nul(value(NFTA_MATCH_INFO)?))?
}

fn message(
    family: NetfilterProtoFamily,
    res_id: u16,
    inner: impl Into<NetfilterMessageInner>,
) -> NetlinkMessage<NetfilterMessage> {
    let message = NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner);
    NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(message))
}
