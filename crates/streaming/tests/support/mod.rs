//! A fake backend that runs real local processes and dials local ports, and shortcuts to the crate's own
//! client (`berth_streaming::client`, which shares only the frame codec with the server).
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use berth_error_kind::ErrorKind;
pub use berth_streaming::client::spdy::{SpdyConnection, SpdyStream};
use berth_streaming::{
    AttachRequest, Backend, BackendError, ExecRequest, ExitStatus, PortStream, Streams, TerminalSize,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Runs `sh -c` for exec; attach echoes stdin to stdout; port-forward dials 127.0.0.1.
#[derive(Default, Clone)]
pub struct FakeBackend {
    pub resizes: Arc<Mutex<Vec<TerminalSize>>>,
    pub pids: Arc<Mutex<Vec<u32>>>,
    pub running: Arc<AtomicUsize>,
}

struct Running(Arc<AtomicUsize>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    async fn exec(&self, request: ExecRequest, streams: Streams) -> Result<ExitStatus, BackendError> {
        if request.container_id == "missing" {
            return Err(BackendError::new(ErrorKind::NotFound, "container \"missing\" not found"));
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(self.running.clone());
        let Streams { stdin, stdout, stderr, resize } = streams;
        if let Some(mut resize) = resize {
            let resizes = self.resizes.clone();
            tokio::spawn(async move {
                while let Some(size) = resize.recv().await {
                    resizes.lock().unwrap().push(size);
                }
            });
        }
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(request.cmd.join(" "))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BackendError::new(ErrorKind::Internal, "spawn failed").with_source(e))?;
        self.pids.lock().unwrap().push(child.id().unwrap());
        let mut child_stdin = child.stdin.take().unwrap();
        let mut child_stdout = child.stdout.take().unwrap();
        let mut child_stderr = child.stderr.take().unwrap();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                let _ = tokio::io::copy(&mut stdin, &mut child_stdin).await;
            }
            drop(child_stdin);
        };
        let out = async move {
            match stdout {
                Some(mut w) => {
                    let _ = tokio::io::copy(&mut child_stdout, &mut w).await;
                    let _ = w.shutdown().await;
                }
                None => {
                    let _ = tokio::io::copy(&mut child_stdout, &mut tokio::io::sink()).await;
                }
            }
        };
        let err = async move {
            match stderr {
                Some(mut w) => {
                    let _ = tokio::io::copy(&mut child_stderr, &mut w).await;
                    let _ = w.shutdown().await;
                }
                None => {
                    let _ = tokio::io::copy(&mut child_stderr, &mut tokio::io::sink()).await;
                }
            }
        };
        // stdin is fed until the process exits, not until the client closes it.
        let feed = tokio::spawn(feed);
        let (_, _, status) = tokio::join!(out, err, child.wait());
        feed.abort();
        let status = status.map_err(|e| BackendError::new(ErrorKind::Internal, "wait failed").with_source(e))?;
        Ok(ExitStatus { code: status.code().unwrap_or(128) })
    }

    async fn attach(&self, _request: AttachRequest, streams: Streams) -> Result<(), BackendError> {
        if let (Some(mut stdin), Some(mut stdout)) = (streams.stdin, streams.stdout) {
            let _ = tokio::io::copy(&mut stdin, &mut stdout).await;
        }
        Ok(())
    }

    async fn port_forward(&self, _pod: &str, port: u16) -> Result<Box<dyn PortStream>, BackendError> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, format!("dial port {port}: {e}")))?;
        Ok(Box::new(tcp))
    }
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Sends a raw HTTP/1.1 request; returns the status code, the response head and the connection.
pub async fn http_request(url: &str, extra_headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let response = berth_streaming::client::http_upgrade(url, extra_headers).await.unwrap();
    (response.status, response.head, response.connection)
}

/// Upgrades `url` to SPDY offering `protocols`; panics unless the server agrees.
pub async fn spdy(url: &str, protocols: &[&str]) -> SpdyConnection {
    SpdyConnection::connect(url, protocols).await.unwrap()
}

/// Everything on `stream` until the server's FIN (panics if it is reset or the connection lost first).
pub async fn read_all(stream: &mut SpdyStream) -> Vec<u8> {
    stream.read_to_end().await.expect("the stream ends with FIN")
}
