//! The streaming server's settings.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// A session in which nothing moved for this long is closed (kubelet's default: 4 hours).
    pub idle_timeout: Duration,
    /// How long a client has to open the streams of a session (or the second stream of a port-forward pair).
    pub stream_creation_timeout: Duration,
    /// How long an issued URL stays valid unused.
    pub token_ttl: Duration,
    /// Sessions at once per container (exec and attach together) or per pod sandbox (port-forward).
    pub max_sessions_per_container: usize,
    /// After a session ends, how long the peer has to close the connection before it is dropped.
    pub close_grace: Duration,
    /// The scheme and authority URLs start with (`http://127.0.0.1:PORT`, or `https://` with TLS, from the
    /// bound address if unset).
    pub base_url: Option<String>,
    /// Serve HTTPS with this configuration (see [`crate::tls::server_config`]); plain HTTP when unset.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            stream_creation_timeout: Duration::from_secs(30),
            token_ttl: Duration::from_secs(60),
            max_sessions_per_container: 16,
            close_grace: Duration::from_secs(2),
            base_url: None,
            tls: None,
        }
    }
}
