//! Version: who is answering. kubelet and crictl call it first on every connection.

use crate::cri::v1::{VersionRequest, VersionResponse};
use crate::error::RpcError;
use crate::version::{KUBELET_API_VERSION, RUNTIME_API_VERSION, RUNTIME_NAME, RUNTIME_VERSION};

pub fn handle(_request: VersionRequest) -> Result<VersionResponse, RpcError> {
    Ok(VersionResponse {
        version: KUBELET_API_VERSION.to_owned(),
        runtime_name: RUNTIME_NAME.to_owned(),
        runtime_version: RUNTIME_VERSION.to_owned(),
        runtime_api_version: RUNTIME_API_VERSION.to_owned(),
    })
}
