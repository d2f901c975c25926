//! UpdateRuntimeConfig: kubelet hands over the node's pod CIDR; berth keeps it (durably, so a restarted
//! daemon still has it) for CNI configurations that ask for it.

use crate::context::Context;
use crate::cri::v1::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};
use crate::error::RpcError;
use crate::records::NodeSettings;

pub async fn handle(
    context: &Context,
    request: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse, RpcError> {
    let Some(pod_cidr) = request.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr) else {
        return Ok(UpdateRuntimeConfigResponse {});
    };
    // kubelet sends a comma-separated list for dual-stack nodes; every entry must be a CIDR.
    for cidr in pod_cidr.split(',').filter(|c| !c.is_empty()) {
        validate_cidr(cidr.trim())?;
    }
    let store = context.store.clone();
    context
        .blocking("store the pod CIDR", move || {
            let mut settings = store.get::<NodeSettings>("settings")?.unwrap_or_default();
            if settings.pod_cidr != pod_cidr {
                tracing::info!(%pod_cidr, previous = %settings.pod_cidr, "pod CIDR updated");
                settings.pod_cidr = pod_cidr;
                store.put(&settings)?;
            }
            Ok(())
        })
        .await?;
    Ok(UpdateRuntimeConfigResponse {})
}

fn validate_cidr(cidr: &str) -> Result<(), RpcError> {
    let invalid = |reason: &str| RpcError::InvalidArgument {
        field: "network_config.pod_cidr",
        reason: format!("{cidr:?} is not a CIDR: {reason}"),
    };
    let (address, prefix) = cidr.split_once('/').ok_or_else(|| invalid("no /prefix length"))?;
    let address: std::net::IpAddr = address.parse().map_err(|_| invalid("bad address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| invalid("bad prefix length"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid("prefix length too long"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_cidr;

    #[test]
    fn cidrs_are_checked() {
        for good in ["10.244.0.0/16", "fd00:10:244::/64", "0.0.0.0/0"] {
            assert!(validate_cidr(good).is_ok(), "{good}");
        }
        for bad in ["10.244.0.0", "10.244.0.0/33", "garbage/8", "fd00::/129"] {
            assert!(validate_cidr(bad).is_err(), "{bad}");
        }
    }
}
