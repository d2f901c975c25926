//! A small synchronous rtnetlink client: the link, address and route work the Go plugins of
//! containernetworking/plugins do through vishvananda/netlink, done in process for the native CNI plugins
//! of this directory (the `bridge` plugin first). Each request carries the flags and attributes
//! vishvananda/netlink (v1.3.1, the version containernetworking/plugins vendors) sends for the call the Go
//! plugin makes, named on each method, so the kernel answers the native plugin as it answers the binary,
//! errors included.
//!
//! Synchronous on purpose: a [`Netlink`] speaks to the network namespace of the thread that opened it,
//! and the plugins run each step on a short-lived thread that joined the pod's or the host's namespace
//! ([`super::netns::within`]). One blocking request and its answer on that thread is all a step needs;
//! an async runtime would have to be kept off threads that change namespace.
//!
//! The message types come from netlink-packet-route; the exchange is ours: every request asks for an
//! acknowledgement (`NLM_F_ACK`) and its outcome is read from it, dumps are read to `NLMSG_DONE` across
//! as many datagrams as the kernel sends (and repeated when the kernel flags them interrupted), and only
//! answers bearing the request's sequence number count. Kernel errors keep their errno
//! ([`NetlinkError::errno`]) so a plugin can print what the Go binary prints ([`errno_text`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge,
    State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// `IFLA_BRPORT_MODE`, the bridge port attribute holding hairpin mode (include/uapi/linux/if_link.h);
/// netlink-packet-route has no variant of its own for it.
const IFLA_BRPORT_MODE: u16 = 4;

/// How many times a dump the kernel flags `NLM_F_DUMP_INTR` (the table changed while it was read) is
/// started again before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// The multicast group of link announcements (`RTMGRP_LINK`, include/uapi/linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 1;

/// A NETLINK_ROUTE socket bound to the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Netlink {
    channel: Channel,
}

/// A netlink socket of one protocol, connected to the kernel, with the sequence of its requests: the
/// request-and-answer loop for any message family (rtnetlink here, conntrack in `native::conntrack`).
#[derive(Debug)]
pub(super) struct Channel {
    socket: Socket,
    /// The sequence number of the request in flight: answers carry it back, older answers are dropped.
    sequence: u32,
}

/// A network interface as `RTM_GETLINK` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", ...; `None` for devices without one (`lo`, physical NICs).
    pub kind: Option<String>,
    /// `IFLA_ADDRESS` when it is an Ethernet address.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// `IFLA_MASTER`: the bridge this link is a port of.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, its peer's index, counted in the peer's namespace.
    pub peer_index: Option<u32>,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// `IFF_PROMISC` as set by a user (a bridge's own use of its ports' promiscuity does not show here).
    pub promisc: bool,
    /// `IFLA_OPERSTATE` is `IF_OPER_UP`: up and with a carrier.
    pub oper_up: bool,
}

/// An interface address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix: u8,
}

/// A route of the main table through one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// The network (`0.0.0.0` or `::` with prefix 0 for a default route).
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
}

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request: `errno` is what it answered (positive, e.g. `libc::EEXIST`).
    #[error("{operation}: {}", errno_text(*errno))]
    Kernel { operation: &'static str, errno: i32 },
    /// The socket could not be opened, or a send or receive on it failed.
    #[error("netlink socket failed")]
    Io(#[from] io::Error),
    /// An answer this module could not read.
    #[error("malformed netlink answer: {0}")]
    Malformed(String),
}

impl NetlinkError {
    /// The errno behind the failure, where there is one: callers test for `EEXIST`, `ENODEV` and the like
    /// as the Go plugins do.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io(err) => err.raw_os_error(),
            NetlinkError::Malformed(_) => None,
        }
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace; it stays in that namespace for its life,
    /// whatever the thread joins after.
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Netlink { channel: Channel::open(NETLINK_ROUTE)? })
    }

    /// The link named `name`, `None` when there is none (`ENODEV`), as `netlink.LinkByName` looks it up.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(message)
    }

    /// The link with index `index`, `None` when there is none (`ENODEV`).
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.get_link(message)
    }

    fn get_link(&mut self, message: LinkMessage) -> Result<Option<Link>, NetlinkError> {
        let answers = match self.exchange("RTM_GETLINK", RouteNetlinkMessage::GetLink(message), NLM_F_ACK) {
            Ok((answers, _)) => answers,
            Err(err) if err.errno() == Some(libc::ENODEV) => return Ok(None),
            Err(err) => return Err(err),
        };
        for answer in answers {
            if let RouteNetlinkMessage::NewLink(message) = answer {
                return Link::from_message(message).map(Some);
            }
        }
        Err(NetlinkError::Malformed("RTM_GETLINK was acknowledged without a link".into()))
    }

    /// Creates a bridge, as the bridge plugin's `netlink.LinkAdd(&netlink.Bridge{..})`: `NLM_F_EXCL`, so
    /// an existing link of that name fails with `EEXIST`; the MTU and VLAN filtering only when asked for,
    /// the kernel's defaults otherwise.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>, vlan_filtering: bool) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])));
        }
        message.attributes.push(LinkAttribute::LinkInfo(info));
        self.acknowledged("RTM_NEWLINK", RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Creates a veth pair, as the plugins' `ip.SetupVeth` does: `name` in this namespace (with `mac` when
    /// given), `peer_name` created directly in the namespace behind `peer_netns` (`IFLA_NET_NS_FD` in the
    /// peer's info), both with `mtu` when given. `EEXIST` when either name is taken.
    pub fn add_veth(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        // Both ends with a transmit queue length of 0, as the plugins' vendored netlink creates them (its
        // `LinkAttrs.TxQLen` is 0 unless set, and only -1 means "the kernel's default").
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes.push(LinkAttribute::TxQueueLen(0));
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        // The kernel reads the descriptor while handling the request, which `peer_netns` outlives.
        peer.attributes.push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName(name.to_string()));
        message.attributes.push(LinkAttribute::TxQueueLen(0));
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            message.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.acknowledged("RTM_NEWLINK", RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets a link up, as `netlink.LinkSetUp` (an `RTM_NEWLINK` changing `IFF_UP` only).
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_flag(index, LinkFlags::Up)
    }

    /// Turns promiscuous mode on, as `netlink.SetPromiscOn` (the bridge plugin's `promiscMode`).
    pub fn set_promisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.set_flag(index, LinkFlags::Promisc)
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = flag;
        message.header.change_mask = flag;
        self.acknowledged("RTM_NEWLINK", RouteNetlinkMessage::NewLink(message), 0)
    }

    /// Sets a link's Ethernet address, as `netlink.LinkSetHardwareAddr`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.set_attribute(index, LinkAttribute::Address(mac.to_vec()))
    }

    /// Makes a link a port of the bridge `master`, as `netlink.LinkSetMaster`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        self.set_attribute(index, LinkAttribute::Controller(master))
    }

    fn set_attribute(&mut self, index: u32, attribute: LinkAttribute) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(attribute);
        self.acknowledged("RTM_SETLINK", RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Sets a bridge port's hairpin mode (traffic may leave by the port it came in on), as
    /// `netlink.LinkSetHairpin`: an `RTM_SETLINK` of family `AF_BRIDGE` carrying `IFLA_BRPORT_MODE` in a
    /// nested `IFLA_PROTINFO`. The link must be a bridge port already.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.interface_family = AddressFamily::Bridge;
        message.header.index = index;
        let mode = LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)]));
        message.attributes.push(LinkAttribute::ProtoInfoBridge(vec![mode]));
        self.acknowledged("RTM_SETLINK", RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Deletes a link, as `netlink.LinkDel` (both ends, for a veth).
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.acknowledged("RTM_DELLINK", RouteNetlinkMessage::DelLink(message), 0)
    }

    /// Deletes link `index` (a veth with its peer) and returns as soon as the kernel has taken it out of
    /// the namespace, which it announces to the link group (`RTM_DELLINK`), instead of when it answers the
    /// request: between the two, with the link, its peer, their addresses and routes already gone from
    /// every view and the rtnl lock released, the kernel waits for an RCU barrier (`netdev_run_todo`, 10-20
    /// ms on a node) before it frees the devices. The request is sent, and its answer read, on a thread of
    /// its own that ends with the answer; when that answer comes first (the deletion failed, or the
    /// announcement was lost to a full socket buffer), it decides. Call it on a thread in the link's
    /// namespace (the sockets are opened there).
    pub fn delete_link_until_unlisted(index: u32) -> Result<(), NetlinkError> {
        let mut watcher = Socket::new(NETLINK_ROUTE)?;
        // Subscribed before the request is sent, so the announcement cannot be missed.
        watcher.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        let mut requester = Netlink::open()?;
        let answered = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).map_err(io::Error::from)?;
        let answered_by_requester = answered.try_clone()?;
        let (answer_sender, answer) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("netlink-dellink".into()).spawn(move || {
            let _ = answer_sender.send(requester.delete_link(index));
            let _ = rustix::io::write(&answered_by_requester, &1u64.to_ne_bytes());
        })?;
        let wait_for_answer =
            || answer.recv().unwrap_or_else(|_| Err(NetlinkError::Malformed("RTM_DELLINK: no answer".into())));
        loop {
            let mut ready = [
                rustix::event::PollFd::new(&watcher, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&answered, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut ready, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return wait_for_answer(),
            }
            if !ready[1].revents().is_empty() {
                return wait_for_answer();
            }
            if ready[0].revents().is_empty() {
                continue;
            }
            let Ok((datagram, _)) = watcher.recv_from_full() else { return wait_for_answer() };
            if announces_deletion(&datagram, index) {
                return Ok(());
            }
        }
    }

    /// The IPv4 and IPv6 addresses of a link (IPv4 first), as `netlink.AddrList` reads them: the local
    /// address where there is one.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Address>, NetlinkError> {
        let mut addresses = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = AddressMessage::default();
            request.header.family = family;
            for answer in self.dump("RTM_GETADDR", RouteNetlinkMessage::GetAddress(request))? {
                let RouteNetlinkMessage::NewAddress(message) = answer else { continue };
                if message.header.index != index {
                    continue;
                }
                let (mut local, mut address) = (None, None);
                for attribute in message.attributes {
                    match attribute {
                        AddressAttribute::Local(ip) => local = Some(ip),
                        AddressAttribute::Address(ip) => address = Some(ip),
                        _ => {}
                    }
                }
                if let Some(ip) = local.or(address) {
                    addresses.push(Address { ip, prefix: message.header.prefix_len });
                }
            }
        }
        Ok(addresses)
    }

    /// Adds an address, as `netlink.AddrAdd` (and `ip addr add`): `NLM_F_EXCL` (`EEXIST` when present),
    /// `IFA_LOCAL` and `IFA_ADDRESS` both the address, and for IPv4 prefixes shorter than /31 the
    /// broadcast address of the subnet.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let message = address_message(index, ip, prefix);
        self.acknowledged("RTM_NEWADDR", RouteNetlinkMessage::NewAddress(message), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes an address, as `netlink.AddrDel` (the same attributes as [`Netlink::add_address`]).
    pub fn delete_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let message = address_message(index, ip, prefix);
        self.acknowledged("RTM_DELADDR", RouteNetlinkMessage::DelAddress(message), 0)
    }

    /// Adds a route through link `index`, as `netlink.RouteAddEcmp` with the route `ipam.ConfigureIface`
    /// builds: `NLM_F_CREATE` without `NLM_F_EXCL` (a route to the same destination through another
    /// gateway is added beside it; an identical one is `EEXIST`), main table, protocol boot, type unicast,
    /// scope universe with or without a gateway (the plugins' `Route.Scope` is 0 unless the IPAM result
    /// names one; `ip route add` would pick link scope for a route without a gateway).
    pub fn add_route(
        &mut self,
        destination: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(destination);
        message.header.destination_prefix_length = prefix;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.attributes.push(RouteAttribute::Destination(destination.into()));
        if let Some(gateway) = gateway {
            message.attributes.push(RouteAttribute::Gateway(gateway.into()));
        }
        message.attributes.push(RouteAttribute::Oif(index));
        self.acknowledged("RTM_NEWROUTE", RouteNetlinkMessage::NewRoute(message), NLM_F_CREATE)
    }

    /// The main table's IPv4 and IPv6 routes through link `index` (IPv4 first), as `netlink.RouteList`
    /// returns them: cached clones left out; a multipath route counts once for each of its next hops
    /// through the link.
    pub fn routes(&mut self, index: u32) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            for answer in self.dump("RTM_GETROUTE", RouteNetlinkMessage::GetRoute(request))? {
                let RouteNetlinkMessage::NewRoute(message) = answer else { continue };
                if message.header.flags.contains(RouteFlags::Cloned) {
                    continue;
                }
                let mut table = u32::from(message.header.table);
                let mut destination = None;
                let mut gateway = None;
                let mut oif = None;
                let mut next_hops = Vec::new();
                for attribute in message.attributes {
                    match attribute {
                        RouteAttribute::Table(id) => table = id,
                        RouteAttribute::Destination(address) => destination = route_ip(address),
                        RouteAttribute::Oif(id) => oif = Some(id),
                        RouteAttribute::MultiPath(hops) => next_hops = hops,
                        other => gateway = gateway.or(gateway_ip(other)),
                    }
                }
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                let destination = destination.unwrap_or(match family {
                    AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                });
                let prefix = message.header.destination_prefix_length;
                if oif == Some(index) {
                    routes.push(Route { destination, prefix, gateway });
                }
                for hop in next_hops.into_iter().filter(|hop| hop.interface_index == index) {
                    let gateway = hop.attributes.into_iter().find_map(gateway_ip);
                    routes.push(Route { destination, prefix, gateway });
                }
            }
        }
        Ok(routes)
    }

    /// The link the kernel would send a packet for `destination` out of (`ip route get`, as
    /// `netlink.RouteGet`): `None` when it has no route.
    pub fn route_get(&mut self, destination: IpAddr) -> Result<Option<u32>, NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(destination);
        message.header.destination_prefix_length = if destination.is_ipv4() { 32 } else { 128 };
        message.attributes.push(RouteAttribute::Destination(destination.into()));
        let answers = match self.exchange("RTM_GETROUTE", RouteNetlinkMessage::GetRoute(message), NLM_F_ACK) {
            Ok((answers, _)) => answers,
            Err(err) if matches!(err.errno(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => return Ok(None),
            Err(err) => return Err(err),
        };
        Ok(answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route) => {
                route.attributes.into_iter().find_map(|attribute| match attribute {
                    RouteAttribute::Oif(index) => Some(index),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    /// Sends a request that changes something and waits for the kernel's acknowledgement.
    fn acknowledged(
        &mut self,
        operation: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        self.exchange(operation, message, NLM_F_ACK | flags).map(drop)
    }

    /// Runs a dump to its end, again from the start when the kernel reports it interrupted.
    fn dump(
        &mut self,
        operation: &'static str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let (answers, interrupted) = self.exchange(operation, message.clone(), NLM_F_DUMP)?;
            if !interrupted {
                return Ok(answers);
            }
        }
        Err(NetlinkError::Kernel { operation, errno: libc::EINTR })
    }

    fn exchange(
        &mut self,
        operation: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), NetlinkError> {
        self.channel.exchange(operation, NetlinkMessage::from(message), flags)
    }
}

impl Channel {
    /// Opens a socket of netlink `protocol` in the calling thread's network namespace; it stays in that
    /// namespace for its life, whatever the thread joins after.
    pub(super) fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        // Connected to the kernel (port 0): the socket then takes no unicast from any other process.
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Channel { socket, sequence: 0 })
    }

    /// Sends one request and reads its answers: up to the acknowledgement (or error) of a request, up to
    /// `NLMSG_DONE` of a dump. Returns the messages answered, and whether the kernel flagged any of them
    /// `NLM_F_DUMP_INTR`.
    pub(super) fn exchange<T>(
        &mut self,
        operation: &'static str,
        mut request: NetlinkMessage<T>,
        flags: u16,
    ) -> Result<(Vec<T>, bool), NetlinkError>
    where
        T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        request.header.flags = NLM_F_REQUEST | flags;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let malformed = |err| NetlinkError::Malformed(format!("{operation}: {err}"));
        let mut answers = Vec::new();
        let mut interrupted = false;
        loop {
            // A datagram holds one or more messages; a dump spans as many datagrams as the kernel needs.
            let datagram = self.receive()?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let header = NetlinkBuffer::new_checked(rest).map_err(malformed)?;
                let length = header.length() as usize;
                let (sequence, message_flags) = (header.sequence_number(), header.flags());
                let bytes = &rest[..length];
                // Messages are padded to 4 bytes, except perhaps the last of a datagram.
                rest = &rest[length.next_multiple_of(4).min(rest.len())..];
                if sequence != self.sequence {
                    // The rest of an earlier exchange that ended early on an answer it could not read.
                    continue;
                }
                interrupted |= message_flags & NLM_F_DUMP_INTR != 0;
                let message = NetlinkMessage::<T>::deserialize(bytes).map_err(malformed)?;
                match message.payload {
                    NetlinkPayload::InnerMessage(answer) => answers.push(answer),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok((answers, interrupted)),
                            // The kernel answers a negative errno.
                            Some(code) => Err(NetlinkError::Kernel { operation, errno: code.get().wrapping_neg() }),
                        };
                    }
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(NetlinkError::Kernel { operation, errno: done.code.wrapping_neg() });
                    }
                    NetlinkPayload::Done(_) => return Ok((answers, interrupted)),
                    NetlinkPayload::Noop => {}
                    other => return Err(NetlinkError::Malformed(format!("{operation}: unexpected {other:?}"))),
                }
            }
        }
    }

    /// Sends `requests` in one datagram, each asking for an acknowledgement, and reads the answers: for an
    /// nfnetlink batch (the first and last requests being its begin and end markers, which are not
    /// acknowledged), whose requests the kernel applies all or none of. The kernel handles a datagram sent
    /// to it before `send` returns, so every answer is queued by then; they are read without waiting.
    /// On failure: the index in `requests` of the first request refused, and why.
    pub(super) fn batch<T>(
        &mut self,
        operation: &'static str,
        requests: Vec<NetlinkMessage<T>>,
    ) -> Result<(), (usize, NetlinkError)>
    where
        T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        let first = self.sequence.wrapping_add(1);
        let last = requests.len().saturating_sub(1);
        let mut datagram = Vec::new();
        for (index, mut request) in requests.into_iter().enumerate() {
            self.sequence = self.sequence.wrapping_add(1);
            let markers = index == 0 || index == last;
            // The caller's flags (an nf_tables rule's NLM_F_APPEND, ...) are kept.
            request.header.flags |= NLM_F_REQUEST | if markers { 0 } else { NLM_F_ACK };
            request.header.sequence_number = self.sequence;
            request.finalize();
            let start = datagram.len();
            datagram.resize(start + request.buffer_len(), 0);
            request.serialize(&mut datagram[start..]);
        }
        let whole = |err: NetlinkError| (0, err);
        self.socket.send(&datagram, 0).map_err(|err| whole(err.into()))?;

        let index_of = |sequence: u32| sequence.wrapping_sub(first) as usize;
        let mut acknowledged = 0;
        let mut refused: Option<(usize, NetlinkError)> = None;
        self.socket.set_non_blocking(true).map_err(|err| whole(err.into()))?;
        let read = loop {
            let datagram = match self.socket.recv_from_full() {
                Ok((datagram, _)) => datagram,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(err) => break Err(whole(err.into())),
            };
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let malformed = |err| whole(NetlinkError::Malformed(format!("{operation}: {err}")));
                let header = NetlinkBuffer::new_checked(rest).map_err(malformed)?;
                let length = header.length() as usize;
                let index = index_of(header.sequence_number());
                let bytes = &rest[..length];
                rest = &rest[length.next_multiple_of(4).min(rest.len())..];
                if index > last {
                    continue;
                }
                if let NetlinkPayload::Error(error) =
                    NetlinkMessage::<T>::deserialize(bytes).map_err(malformed)?.payload
                {
                    acknowledged += 1;
                    if let Some(code) = error.code
                        && refused.as_ref().is_none_or(|(earlier, _)| index < *earlier)
                    {
                        refused = Some((index, NetlinkError::Kernel { operation, errno: code.get().wrapping_neg() }));
                    }
                }
            }
        };
        self.socket.set_non_blocking(false).map_err(|err| whole(err.into()))?;
        read?;
        match refused {
            Some(refused) => Err(refused),
            None if acknowledged < last.saturating_sub(1) => Err(whole(NetlinkError::Malformed(format!(
                "{operation}: {acknowledged} of {} requests answered",
                last.saturating_sub(1)
            )))),
            None => Ok(()),
        }
    }

    /// The next datagram, whole whatever its size.
    fn receive(&self) -> Result<Vec<u8>, NetlinkError> {
        loop {
            match self.socket.recv_from_full() {
                Ok((datagram, _)) => return Ok(datagram),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// Whether `datagram`, read from the link group, holds the announcement that link `index` was deleted.
fn announces_deletion(datagram: &[u8], index: u32) -> bool {
    let mut rest = datagram;
    while let Ok(header) = NetlinkBuffer::new_checked(rest) {
        let length = header.length() as usize;
        let bytes = &rest[..length];
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
        if let Ok(NetlinkMessage { payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)), .. }) =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
            && link.header.index == index
        {
            return true;
        }
    }
    false
}

impl Link {
    fn from_message(message: LinkMessage) -> Result<Link, NetlinkError> {
        let flags = message.header.flags;
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            master: None,
            peer_index: None,
            up: flags.contains(LinkFlags::Up),
            promisc: flags.contains(LinkFlags::Promisc),
            oper_up: false,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(address) => link.mac = <[u8; 6]>::try_from(address.as_slice()).ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Controller(master) if master != 0 => link.master = Some(master),
                LinkAttribute::Link(peer) if peer != 0 => link.peer_index = Some(peer),
                LinkAttribute::OperState(state) => link.oper_up = matches!(state, State::Up),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        if link.name.is_empty() {
            return Err(NetlinkError::Malformed(format!("RTM_NEWLINK of index {} without a name", link.index)));
        }
        Ok(link)
    }
}

/// The request `netlink.AddrAdd` and `netlink.AddrDel` build for an address without a peer.
fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family(ip);
    message.header.prefix_len = prefix;
    message.header.index = index;
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    match ip {
        // RFC 3021: /31 and /32 have no broadcast address.
        IpAddr::V4(v4) if prefix < 31 => {
            let host_bits = u32::MAX >> prefix;
            message.attributes.push(AddressAttribute::Broadcast(Ipv4Addr::from(u32::from(v4) | host_bits)));
        }
        _ => {}
    }
    message
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// The gateway an attribute names: `RTA_GATEWAY`, or `RTA_VIA` (an IPv4 route through an IPv6 next hop).
fn gateway_ip(attribute: RouteAttribute) -> Option<IpAddr> {
    match attribute {
        RouteAttribute::Gateway(address) => route_ip(address),
        RouteAttribute::Via(RouteVia::Inet(ip)) => Some(IpAddr::V4(ip)),
        RouteAttribute::Via(RouteVia::Inet6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// An Ethernet address as Go's `net.HardwareAddr.String()` prints it ("0a:58:0a:58:00:05"), the form of
/// the plugins' results and messages.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

/// What Go's `syscall.Errno.Error()` prints for `errno` (linux/amd64): glibc's `strerror` text with a
/// lower-case first letter, "errno N" past the table. The native plugins print the Go binaries' messages,
/// and these end in such texts ("could not add \"cni0\": file exists").
pub fn errno_text(errno: i32) -> String {
    match usize::try_from(errno).ok().and_then(|index| GO_ERRNO_TEXT.get(index)) {
        Some(text) if !text.is_empty() => (*text).to_string(),
        _ => format!("errno {errno}"),
    }
}

/// Go's table, indexed by errno: `errors` in syscall/zerrors_linux_amd64.go (the same texts as
/// `errorList` in golang.org/x/sys/unix/zerrors_linux_amd64.go). Empty where Go has no entry.
const GO_ERRNO_TEXT: [&str; 134] = [
    "",
    "operation not permitted",           // EPERM
    "no such file or directory",         // ENOENT
    "no such process",                   // ESRCH
    "interrupted system call",           // EINTR
    "input/output error",                // EIO
    "no such device or address",         // ENXIO
    "argument list too long",            // E2BIG
    "exec format error",                 // ENOEXEC
    "bad file descriptor",               // EBADF
    "no child processes",                // ECHILD
    "resource temporarily unavailable",  // EAGAIN
    "cannot allocate memory",            // ENOMEM
    "permission denied",                 // EACCES
    "bad address",                       // EFAULT
    "block device required",             // ENOTBLK
    "device or resource busy",           // EBUSY
    "file exists",                       // EEXIST
    "invalid cross-device link",         // EXDEV
    "no such device",                    // ENODEV
    "not a directory",                   // ENOTDIR
    "is a directory",                    // EISDIR
    "invalid argument",                  // EINVAL
    "too many open files in system",     // ENFILE
    "too many open files",               // EMFILE
    "inappropriate ioctl for device",    // ENOTTY
    "text file busy",                    // ETXTBSY
    "file too large",                    // EFBIG
    "no space left on device",           // ENOSPC
    "illegal seek",                      // ESPIPE
    "read-only file system",             // EROFS
    "too many links",                    // EMLINK
    "broken pipe",                       // EPIPE
    "numerical argument out of domain",  // EDOM
    "numerical result out of range",     // ERANGE
    "resource deadlock avoided",         // EDEADLK
    "file name too long",                // ENAMETOOLONG
    "no locks available",                // ENOLCK
    "function not implemented",          // ENOSYS
    "directory not empty",               // ENOTEMPTY
    "too many levels of symbolic links", // ELOOP
    "",
    "no message of desired type",   // ENOMSG
    "identifier removed",           // EIDRM
    "channel number out of range",  // ECHRNG
    "level 2 not synchronized",     // EL2NSYNC
    "level 3 halted",               // EL3HLT
    "level 3 reset",                // EL3RST
    "link number out of range",     // ELNRNG
    "protocol driver not attached", // EUNATCH
    "no CSI structure available",   // ENOCSI
    "level 2 halted",               // EL2HLT
    "invalid exchange",             // EBADE
    "invalid request descriptor",   // EBADR
    "exchange full",                // EXFULL
    "no anode",                     // ENOANO
    "invalid request code",         // EBADRQC
    "invalid slot",                 // EBADSLT
    "",
    "bad font file format",                              // EBFONT
    "device not a stream",                               // ENOSTR
    "no data available",                                 // ENODATA
    "timer expired",                                     // ETIME
    "out of streams resources",                          // ENOSR
    "machine is not on the network",                     // ENONET
    "package not installed",                             // ENOPKG
    "object is remote",                                  // EREMOTE
    "link has been severed",                             // ENOLINK
    "advertise error",                                   // EADV
    "srmount error",                                     // ESRMNT
    "communication error on send",                       // ECOMM
    "protocol error",                                    // EPROTO
    "multihop attempted",                                // EMULTIHOP
    "RFS specific error",                                // EDOTDOT
    "bad message",                                       // EBADMSG
    "value too large for defined data type",             // EOVERFLOW
    "name not unique on network",                        // ENOTUNIQ
    "file descriptor in bad state",                      // EBADFD
    "remote address changed",                            // EREMCHG
    "can not access a needed shared library",            // ELIBACC
    "accessing a corrupted shared library",              // ELIBBAD
    ".lib section in a.out corrupted",                   // ELIBSCN
    "attempting to link in too many shared libraries",   // ELIBMAX
    "cannot exec a shared library directly",             // ELIBEXEC
    "invalid or incomplete multibyte or wide character", // EILSEQ
    "interrupted system call should be restarted",       // ERESTART
    "streams pipe error",                                // ESTRPIPE
    "too many users",                                    // EUSERS
    "socket operation on non-socket",                    // ENOTSOCK
    "destination address required",                      // EDESTADDRREQ
    "message too long",                                  // EMSGSIZE
    "protocol wrong type for socket",                    // EPROTOTYPE
    "protocol not available",                            // ENOPROTOOPT
    "protocol not supported",                            // EPROTONOSUPPORT
    "socket type not supported",                         // ESOCKTNOSUPPORT
    "operation not supported",                           // ENOTSUP
    "protocol family not supported",                     // EPFNOSUPPORT
    "address family not supported by protocol",          // EAFNOSUPPORT
    "address already in use",                            // EADDRINUSE
    "cannot assign requested address",                   // EADDRNOTAVAIL
    "network is down",                                   // ENETDOWN
    "network is unreachable",                            // ENETUNREACH
    "network dropped connection on reset",               // ENETRESET
    "software caused connection abort",                  // ECONNABORTED
    "connection reset by peer",                          // ECONNRESET
    "no buffer space available",                         // ENOBUFS
    "transport endpoint is already connected",           // EISCONN
    "transport endpoint is not connected",               // ENOTCONN
    "cannot send after transport endpoint shutdown",     // ESHUTDOWN
    "too many references: cannot splice",                // ETOOMANYREFS
    "connection timed out",                              // ETIMEDOUT
    "connection refused",                                // ECONNREFUSED
    "host is down",                                      // EHOSTDOWN
    "no route to host",                                  // EHOSTUNREACH
    "operation already in progress",                     // EALREADY
    "operation now in progress",                         // EINPROGRESS
    "stale file handle",                                 // ESTALE
    "structure needs cleaning",                          // EUCLEAN
    "not a XENIX named type file",                       // ENOTNAM
    "no XENIX semaphores available",                     // ENAVAIL
    "is a named type file",                              // EISNAM
    "remote I/O error",                                  // EREMOTEIO
    "disk quota exceeded",                               // EDQUOT
    "no medium found",                                   // ENOMEDIUM
    "wrong medium type",                                 // EMEDIUMTYPE
    "operation canceled",                                // ECANCELED
    "required key not available",                        // ENOKEY
    "key has expired",                                   // EKEYEXPIRED
    "key has been revoked",                              // EKEYREVOKED
    "key was rejected by service",                       // EKEYREJECTED
    "owner died",                                        // EOWNERDEAD
    "state not recoverable",                             // ENOTRECOVERABLE
    "operation not possible due to RF-kill",             // ERFKILL
    "memory page has hardware error",                    // EHWPOISON
];
