//! `berth port-forward POD [LOCAL:]REMOTE...`: listens on 127.0.0.1:LOCAL for each pair and forwards every
//! accepted connection to REMOTE inside the pod, like `crictl port-forward` / `kubectl port-forward`. One
//! PortForward RPC and one streaming session carry all connections (the URL is single-use); it runs until
//! Ctrl-C or until the session ends.

use std::sync::Arc;

use berth_streaming::client::PortForwarder;
use tokio::net::TcpListener;

use super::client::{Client, rpc_failed};
use super::stream::TransportArg;
use crate::cri::v1::PortForwardRequest;

/// `berth port-forward`.
#[derive(Debug, clap::Args)]
pub struct PortForwardArgs {
    /// The pod sandbox ID.
    pub pod: String,
    /// Ports as LOCAL:REMOTE, or REMOTE alone (the same local port), or :REMOTE (any free local port).
    #[arg(required = true)]
    pub ports: Vec<String>,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// The streaming protocol (websocket: SPDY tunnelled in WebSocket, as crictl does).
    #[arg(long, value_enum, default_value_t = TransportArg::Spdy)]
    pub transport: TransportArg,
}

/// A LOCAL:REMOTE pair; local 0 means any free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortPair {
    local: u16,
    remote: u16,
}

fn parse_pair(text: &str) -> Result<PortPair, String> {
    let port = |p: &str, zero_ok: bool| match p.parse::<u16>() {
        Ok(0) if !zero_ok => Err(format!("invalid port {p:?} in {text:?}")),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("invalid port {p:?} in {text:?} (want LOCAL:REMOTE or REMOTE)")),
    };
    match text.split_once(':') {
        None => {
            let remote = port(text, false)?;
            Ok(PortPair { local: remote, remote })
        }
        Some(("", remote)) => Ok(PortPair { local: 0, remote: port(remote, false)? }),
        Some((local, remote)) => Ok(PortPair { local: port(local, true)?, remote: port(remote, false)? }),
    }
}

pub async fn run(mut client: Client, args: PortForwardArgs) -> Result<(), String> {
    let pairs = args.ports.iter().map(|p| parse_pair(p)).collect::<Result<Vec<_>, _>>()?;
    // Listen first: a port in use is the operator's error to see before anything is asked of the daemon.
    let mut listeners = Vec::new();
    for pair in &pairs {
        let listener = TcpListener::bind((args.address, pair.local))
            .await
            .map_err(|err| format!("cannot listen on {}:{}: {err}", args.address, pair.local))?;
        listeners.push((listener, pair.remote));
    }
    let request = PortForwardRequest {
        pod_sandbox_id: args.pod.clone(),
        port: pairs.iter().map(|p| i32::from(p.remote)).collect(),
    };
    let url = client.runtime.port_forward(request).await.map_err(|s| rpc_failed("PortForward", s))?.into_inner().url;
    let forwarder = Arc::new(
        PortForwarder::connect(&url, args.transport.into())
            .await
            .map_err(|err| format!("cannot open the port-forward session: {}", crate::error::chain(&err)))?,
    );
    let mut accepting = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let local = listener.local_addr().map_err(|err| format!("listener address: {err}"))?;
        // Scripts (and the tests) read the local port from this line, as from kubectl's.
        println!("Forwarding from {local} -> {remote}");
        let forwarder = forwarder.clone();
        accepting.spawn(accept_loop(listener, remote, forwarder));
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        () = forwarder.closed() => Err("the port-forward session ended".to_owned()),
        Some(_) = accepting.join_next() => Err("a listener stopped".to_owned()),
    }
}

async fn accept_loop(listener: TcpListener, remote: u16, forwarder: Arc<PortForwarder>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                eprintln!("berth: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            if let Err(err) = forwarder.forward(remote, tcp).await {
                eprintln!("berth: forwarding {peer} to port {remote}: {}", crate::error::chain(&err));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{PortPair, parse_pair};

    #[test]
    fn port_pairs_are_read_like_kubectls() {
        assert_eq!(parse_pair("8080:80").unwrap(), PortPair { local: 8080, remote: 80 });
        assert_eq!(parse_pair("80").unwrap(), PortPair { local: 80, remote: 80 });
        assert_eq!(parse_pair(":80").unwrap(), PortPair { local: 0, remote: 80 });
        assert_eq!(parse_pair("0:80").unwrap(), PortPair { local: 0, remote: 80 });
        for bad in ["80:0", "0", "x:80", "80:x", "70000:80", ""] {
            assert!(parse_pair(bad).is_err(), "{bad:?}");
        }
    }
}
