//! A CRI client over the daemon's unix socket, shared by the CLI verbs.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Uri};

use crate::cri::v1::image_service_client::ImageServiceClient;
use crate::cri::v1::runtime_service_client::RuntimeServiceClient;

pub const DEFAULT_ENDPOINT: &str = "unix:///run/berth/berth.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unsupported runtime endpoint {0:?}: berth listens on unix sockets (unix:///path or /path)")]
    Endpoint(String),
    #[error("cannot connect to the runtime at unix://{} (is `berth serve` running?)", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub path: PathBuf,
}

impl Endpoint {
    pub fn parse(endpoint: &str) -> Result<Endpoint, ClientError> {
        let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
        if path.starts_with('/') {
            Ok(Endpoint { path: PathBuf::from(path) })
        } else {
            Err(ClientError::Endpoint(endpoint.to_owned()))
        }
    }
}

/// Both CRI clients over one connection.
#[derive(Debug, Clone)]
pub struct Client {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
    /// berth's own API (pull progress), on the same connection.
    pub pulls: crate::cri::berth::pulls_client::PullsClient<Channel>,
}

impl Client {
    pub async fn connect(endpoint: Endpoint, timeout: Duration) -> Result<Client, ClientError> {
        let path = endpoint.path.clone();
        // The URI is required by the HTTP/2 layer but never resolved: the connector below dials the socket.
        let channel = tonic::transport::Endpoint::from_static("http://berth.invalid")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(|source| ClientError::Connect { path: endpoint.path.clone(), source })?;
        Ok(Client {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel.clone()),
            pulls: crate::cri::berth::pulls_client::PullsClient::new(channel),
        })
    }
}

/// One line for a failed call: the RPC, the code and the daemon's message.
pub fn rpc_failed(rpc: &str, status: tonic::Status) -> String {
    format!("{rpc} failed: {:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(
            Endpoint::parse("unix:///run/berth/berth.sock").unwrap().path,
            PathBuf::from("/run/berth/berth.sock")
        );
        assert_eq!(Endpoint::parse("/tmp/b.sock").unwrap().path, PathBuf::from("/tmp/b.sock"));
        assert!(Endpoint::parse("tcp://127.0.0.1:1").is_err());
        assert!(Endpoint::parse("relative.sock").is_err());
    }
}
