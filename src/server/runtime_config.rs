//! RuntimeConfig: the cgroup driver kubelet must use to lay out pod cgroups the way berth expects.

use crate::config::CgroupDriver as ConfiguredDriver;
use crate::context::Context;
use crate::cri::v1::{CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse};
use crate::error::RpcError;

pub fn handle(context: &Context, _request: RuntimeConfigRequest) -> Result<RuntimeConfigResponse, RpcError> {
    let cgroup_driver = match context.config.cgroup.driver {
        ConfiguredDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        ConfiguredDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse { linux: Some(LinuxRuntimeConfiguration { cgroup_driver: cgroup_driver.into() }) })
}
