//! berth's streaming server: `kubectl exec/attach/port-forward` and `crictl exec/attach/port-forward` end
//! here. It serves one-shot URLs (`/exec/{token}`, `/attach/{token}`, `/portforward/{token}`) over HTTP/1.1,
//! upgrades them to SPDY/3.1 or WebSocket, speaks Kubernetes' remotecommand and port-forward protocols, and
//! asks a [`Backend`] to run the exec, attach or dial. It knows HTTP and those protocols, not CRI: the
//! daemon validates CRI requests, calls [`Server::url_for`], and implements [`Backend`]. With a TLS
//! configuration ([`tls::server_config`]) it serves HTTPS and hands out `https://` URLs. [`client`] is the
//! other end: what `berth exec/attach/port-forward`, the benchmarks and the tests connect with.

mod activity;
mod backend;
pub mod client;
mod config;
mod error;
mod server;
mod session;
pub mod spdy;
mod status;
pub mod tls;
mod tokens;
mod websocket;

pub use backend::{
    AttachRequest, Backend, BackendError, ExecRequest, ExitStatus, PortForwardRequest, PortStream, Request, Streams,
    TerminalSize,
};
pub use config::Config;
pub use error::ServerError;
pub use server::Server;
