//! Deleting conntrack entries through ctnetlink, as portmap does after adding a pod's UDP host ports
//! (`utils.DeleteConntrackEntriesForDstPort`): an entry left from an earlier pod on the same host port would
//! keep sending that port's UDP packets to the old address until it times out.

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, ProtoTuple, Protocol, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink::{Channel, NetlinkError};

/// Deletes every UDP conntrack entry of the family whose original direction goes to one of `ports`, in
/// the calling thread's network namespace. An entry that vanished meanwhile is no error.
pub fn delete_udp_to_ports(v6: bool, ports: &[u16]) -> Result<(), NetlinkError> {
    let mut channel = Channel::open(NETLINK_NETFILTER)?;
    for original in udp_to_ports(&mut channel, v6, ports)? {
        let delete = request(v6, ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(original)]));
        match channel.exchange("IPCTNL_MSG_CT_DELETE", delete, NLM_F_ACK) {
            Ok(_) => {}
            Err(err) if err.errno() == Some(libc::ENOENT) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// How many UDP entries of the family go to one of `ports` (what [`delete_udp_to_ports`] deletes).
pub fn count_udp_to_ports(v6: bool, ports: &[u16]) -> Result<usize, NetlinkError> {
    Ok(udp_to_ports(&mut Channel::open(NETLINK_NETFILTER)?, v6, ports)?.len())
}

/// The original-direction tuples of the UDP entries to `ports`.
fn udp_to_ports(channel: &mut Channel, v6: bool, ports: &[u16]) -> Result<Vec<Vec<Tuple>>, NetlinkError> {
    let (entries, _) =
        channel.exchange("IPCTNL_MSG_CT_GET", request(v6, ConntrackMessage::Get(Vec::new())), NLM_F_DUMP)?;
    let mut found = Vec::new();
    for entry in entries {
        let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)) = entry.inner else { continue };
        let Some(original) = attributes.into_iter().find_map(|attribute| match attribute {
            ConntrackAttribute::CtaTupleOrig(tuple) => Some(tuple),
            _ => None,
        }) else {
            continue;
        };
        let (mut udp, mut port) = (false, None);
        for field in
            original.iter().filter_map(|part| if let Tuple::Proto(proto) = part { Some(proto) } else { None }).flatten()
        {
            match field {
                ProtoTuple::Protocol(Protocol::Udp) => udp = true,
                ProtoTuple::DestinationPort(p) => port = Some(*p),
                _ => {}
            }
        }
        if udp && port.is_some_and(|port| ports.contains(&port)) {
            found.push(original);
        }
    }
    Ok(found)
}

fn request(v6: bool, message: ConntrackMessage) -> NetlinkMessage<NetfilterMessage> {
    let family = if v6 { NetfilterProtoFamily::IPv6 } else { NetfilterProtoFamily::IPv4 };
    let message = NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), message);
    NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(message))
}
