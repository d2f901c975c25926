//! The client side of the streaming protocols: given a URL that an Exec, Attach or PortForward RPC returned,
//! run a remote command (stdin, stdout, stderr, tty resizes, exit code) or forward connections to a pod's
//! port. Used by `berth exec/attach/port-forward`, the benchmarks and this crate's own tests.
//!
//! Two transports, as crictl and kubectl have:
//! - SPDY/3.1 (`spdy.rs`, crictl's default): a session of streams named by headers; remotecommand
//!   `v4.channel.k8s.io`, port-forward `portforward.k8s.io` with a data and an error stream per connection.
//! - WebSocket (`websocket.rs`): remotecommand `v5.channel.k8s.io` (or v4), one message per chunk prefixed
//!   by its channel; port-forward either SPDY tunnelled in binary messages (`SPDY/3.1+portforward.k8s.io`,
//!   many connections per session, what [`PortForwarder`] uses) or the channel protocol with the port in the
//!   query (one session per connection: [`websocket::forward_port`]).
//!
//! Only plain `http://` URLs: the server has no TLS yet.

pub mod spdy;
pub mod websocket;

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::backend::TerminalSize;

/// Which protocol family carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Spdy,
    WebSocket,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unsupported streaming URL {0:?} (want http://host:port/path)")]
    Url(String),
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("the server refused the upgrade: {0}")]
    Refused(String),
    #[error("websocket handshake failed")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("the server chose protocol {0:?}, which this client does not speak")]
    Protocol(String),
    #[error("the server refused a stream (RST_STREAM status {0})")]
    StreamRefused(u32),
    #[error("the connection to the streaming server was lost")]
    ConnectionLost,
    #[error("connection to the streaming server failed")]
    Io(#[source] io::Error),
    /// The server ended the session with a failure that is not an exit code (its message as given).
    #[error("{0}")]
    Remote(String),
    #[error("the server's status is not a Kubernetes Status object: {0}")]
    Status(String),
}

/// The local ends of a remote command's streams. Each `Some` must match what the Exec/Attach request asked
/// for (stdin ⇔ `stdin`, stdout ⇔ `stdout`, stderr ⇔ `stderr`; `tty` as requested): the server waits for
/// exactly the streams the request named.
#[derive(Default)]
pub struct CommandIo {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub tty: bool,
    /// Terminal sizes to send (tty only): the first is the initial size.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// Runs the exec or attach behind `url` to its end; returns the command's exit code (0 for an attach that
/// ended well). A failure that is not an exit code (the container is gone, the session idled out) is
/// [`ClientError::Remote`].
pub async fn run_command(url: &str, transport: Transport, io: CommandIo) -> Result<i32, ClientError> {
    match transport {
        Transport::Spdy => spdy::run_command(url, io).await,
        Transport::WebSocket => websocket::run_command(url, io).await,
    }
}

/// One port-forward session on which any number of connections are forwarded, each to a port of the pod.
/// With [`Transport::WebSocket`] it is SPDY tunnelled in WebSocket, as client-go's tunneling dialer does.
pub struct PortForwarder {
    conn: spdy::SpdyConnection,
    next_request_id: std::sync::atomic::AtomicU64,
}

impl PortForwarder {
    pub async fn connect(url: &str, transport: Transport) -> Result<PortForwarder, ClientError> {
        let conn = match transport {
            Transport::Spdy => spdy::SpdyConnection::connect(url, spdy::PORT_FORWARD_PROTOCOLS).await?,
            Transport::WebSocket => websocket::spdy_tunnel(url).await?,
        };
        Ok(PortForwarder { conn, next_request_id: std::sync::atomic::AtomicU64::new(0) })
    }

    /// Forwards `local` (a TCP connection, or any byte stream) to `port` in the pod until the pod's end
    /// closes; an error the server reports for this connection (the dial failed) is [`ClientError::Remote`].
    pub async fn forward<IO>(&self, port: u16, local: IO) -> Result<(), ClientError>
    where
        IO: AsyncRead + AsyncWrite + Send,
    {
        let id = self.next_request_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        spdy::forward(&self.conn, port, id, local).await
    }

    /// Resolves when the session is over (the server closed it or the connection dropped).
    pub async fn closed(&self) {
        self.conn.closed().await
    }

    /// Ends the session: GOAWAY, then the connection is shut.
    pub async fn close(self) {
        self.conn.close().await
    }
}

/// What a v4+ remotecommand server wrote on the error stream, as an exit code: a `Status` of `Success` is
/// 0; `Failure` with reason `NonZeroExitCode` carries the code in the `ExitCode` cause; any other failure is
/// an error with its message. Nothing at all (the session ended without a status) is `None`.
pub fn exit_code_of_status(body: &[u8]) -> Result<Option<i32>, ClientError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let status: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ClientError::Status(String::from_utf8_lossy(body).into_owned()))?;
    match status["status"].as_str() {
        Some("Success") => return Ok(Some(0)),
        Some("Failure") => {}
        _ => return Err(ClientError::Status(status.to_string())),
    }
    let message = status["message"].as_str().unwrap_or("the remote command failed").to_owned();
    if status["reason"] == "NonZeroExitCode" {
        let causes = status["details"]["causes"].as_array().map(Vec::as_slice).unwrap_or_default();
        let code = causes
            .iter()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str())
            .and_then(|code| code.parse::<i32>().ok());
        return match code {
            Some(code) => Ok(Some(code)),
            None => Err(ClientError::Status(status.to_string())),
        };
    }
    Err(ClientError::Remote(message))
}

/// An `http://host:port/path?query` URL's authority (`host:port`) and path with query.
fn split_url(url: &str) -> Result<(&str, &str), ClientError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let slash = rest.find('/').ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok((authority, path))
}

async fn dial(authority: &str) -> Result<TcpStream, ClientError> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|source| ClientError::Connect { address: authority.to_owned(), source })?;
    // Interactive sessions send keystrokes one by one: do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The answer to an HTTP/1.1 upgrade request: the status code, the response head as text, and the
/// connection, positioned right after the head.
pub struct UpgradeResponse {
    pub status: u16,
    pub head: String,
    pub connection: TcpStream,
}

impl UpgradeResponse {
    /// A response header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `GET url` with `headers` and reads the response head. Used for the SPDY upgrade (which, unlike
/// WebSocket's, no HTTP library here speaks) and by tests that check how requests are refused.
pub async fn http_upgrade(url: &str, headers: &[(&str, &str)]) -> Result<UpgradeResponse, ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (authority, path) = split_url(url)?;
    let mut tcp = dial(authority).await?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.map_err(ClientError::Io)?;
    // Byte by byte up to the blank line, so no frame bytes after it are consumed; a head is small.
    let mut response = Vec::with_capacity(256);
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() > 64 * 1024 {
            return Err(ClientError::Refused("response head larger than 64 KiB".to_owned()));
        }
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await.map_err(ClientError::Io)? == 0 {
            break;
        }
        response.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&response).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(UpgradeResponse { status, head, connection: tcp })
}

/// Reads the body of a refused upgrade (up to 4 KiB, briefly) for the error message.
async fn refused(mut response: UpgradeResponse) -> ClientError {
    use tokio::io::AsyncReadExt;
    let mut body = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_millis(500), response.connection.read(&mut body))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let first = response.head.lines().next().unwrap_or("").to_owned();
    let body = String::from_utf8_lossy(&body[..n]).trim().to_owned();
    ClientError::Refused(if body.is_empty() { first } else { format!("{first}: {body}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Outcome;

    #[test]
    fn exit_codes_are_read_from_the_statuses_the_server_writes() {
        assert_eq!(exit_code_of_status(&Outcome::Success.status_json()).unwrap(), Some(0));
        assert_eq!(exit_code_of_status(&Outcome::ExitCode(3).status_json()).unwrap(), Some(3));
        assert_eq!(exit_code_of_status(&Outcome::ExitCode(137).status_json()).unwrap(), Some(137));
        let err = exit_code_of_status(&Outcome::Error("container \"x\" not found".into()).status_json()).unwrap_err();
        assert!(matches!(&err, ClientError::Remote(m) if m == "container \"x\" not found"), "{err:?}");
        assert_eq!(exit_code_of_status(b"").unwrap(), None);
        assert!(matches!(exit_code_of_status(b"not json"), Err(ClientError::Status(_))));
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(split_url("http://127.0.0.1:10010/exec/abc").unwrap(), ("127.0.0.1:10010", "/exec/abc"));
        assert_eq!(split_url("http://[::1]:1/portforward/x?port=80").unwrap(), ("[::1]:1", "/portforward/x?port=80"));
        assert!(split_url("https://h/exec/x").is_err());
        assert!(split_url("http://h").is_err());
    }
}
