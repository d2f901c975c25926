//! SPDY/3.1 as Kubernetes uses it: the HTTP upgrade, the frame codec, sessions with flow control, and the
//! remotecommand and port-forward protocols on top.

pub mod conn;
pub mod frame;
pub(crate) mod portforward;
pub(crate) mod remotecommand;
pub(crate) mod wire;

pub use portforward::PROTOCOLS as PORT_FORWARD_PROTOCOLS;
pub use remotecommand::PROTOCOLS as REMOTE_COMMAND_PROTOCOLS;
