//! `berth version`: the daemon's Version answer, like `crictl version`.

use serde::Serialize;

use super::client::{Client, rpc_failed};
use super::output::{OutputFormat, print};
use crate::cri::v1::VersionRequest;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionView {
    version: String,
    runtime_name: String,
    runtime_version: String,
    runtime_api_version: String,
}

pub async fn run(mut client: Client, format: OutputFormat) -> Result<(), String> {
    let answer = client.runtime.version(VersionRequest::default()).await.map_err(|s| rpc_failed("Version", s))?;
    let answer = answer.into_inner();
    let view = VersionView {
        version: answer.version,
        runtime_name: answer.runtime_name,
        runtime_version: answer.runtime_version,
        runtime_api_version: answer.runtime_api_version,
    };
    print(format, &view, |v| {
        format!(
            "Version:            {}\nRuntimeName:        {}\nRuntimeVersion:     {}\nRuntimeApiVersion:  {}\n",
            v.version, v.runtime_name, v.runtime_version, v.runtime_api_version
        )
    })
}
