//! The OCI distribution API client: manifests and blobs from registries and their mirrors.
//!
//! Per registry host (configured by the daemon): mirrors tried in order before the registry itself, plain
//! HTTP only for hosts marked insecure, extra CA roots and a client certificate, default credentials.
//! Authentication follows the registry's `WWW-Authenticate` challenge (distribution's token spec): Basic
//! with the credentials, or Bearer tokens fetched from the realm (with Basic credentials, or a refresh
//! token from an identity token) and cached per host and scope until they expire. A registry token from
//! the request is sent as is. Credentials given for a registry are never sent to its mirrors, which are
//! other hosts; cross-host redirects (to blob storage) drop the Authorization header (reqwest does).
//!
//! Failures are retried with exponential backoff when they may be transient (connection errors, 5xx, 429)
//! on the last endpoint; a mirror that fails is skipped at once for the next endpoint. A body that
//! delivers no byte for the stall timeout is abandoned. Credentials never appear in errors or logs:
//! [`Credentials`] prints as `<redacted>`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use base64::Engine;
use berth_error_kind::{ErrorKind, Kinded};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RANGE, WWW_AUTHENTICATE};

use crate::reference::{DOCKER_HUB, Reference};

/// Credentials for one registry. `Debug` never shows the secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (docker's "identity token"), exchanged for access tokens at the realm.
    IdentityToken(String),
    /// A bearer token sent as is.
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => write!(f, "RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// From docker's `auth` field: base64 of `user:password`.
    pub fn from_auth(auth: &str) -> Option<Credentials> {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        Some(Credentials::Basic { username: username.to_owned(), password: password.to_owned() })
    }
}

/// How to reach one registry host.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Base URLs (`http://127.0.0.1:5000`), tried in order before the registry itself.
    pub mirrors: Vec<String>,
    /// Plain HTTP for the registry's own address.
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Used when a pull request carries none.
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub hosts: HashMap<String, HostConfig>,
    /// No byte for this long abandons a request (a stalled registry).
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per request on the registry itself (mirrors get one).
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            hosts: HashMap::new(),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            attempts: 4,
            first_backoff: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} sent no data for {seconds} s (stall timeout)")]
    Stalled { url: String, seconds: u64 },
    #[error("{url} answered {status}")]
    Server { url: String, status: StatusCode },
    #[error("{url} answered 401 Unauthorized: {hint}")]
    Unauthorized { url: String, hint: &'static str },
    #[error("{url} answered 403 Forbidden: access denied")]
    Denied { url: String },
    #[error("{url}: {what} not found (404)")]
    NotFound { url: String, what: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("token service {realm} refused to issue a token: {reason}")]
    Token { realm: String, reason: String },
    #[error("registry {host}: cannot set up the HTTP client: {reason}")]
    Client { host: String, reason: String },
    #[error("{url} sent more than {limit} bytes for a document")]
    TooLarge { url: String, limit: usize },
    #[error("{url} answered 200 to a ranged request, so the interrupted download cannot resume")]
    NoResume { url: String },
}

impl Kinded for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Unreachable { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Server { .. }
            | RegistryError::NoResume { .. } => ErrorKind::Unavailable,
            RegistryError::Unauthorized { .. } | RegistryError::Denied { .. } | RegistryError::Token { .. } => {
                ErrorKind::FailedPrecondition
            }
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Client { .. } => ErrorKind::InvalidArgument,
            RegistryError::Status { .. } | RegistryError::TooLarge { .. } => ErrorKind::Internal,
        }
    }
}

impl RegistryError {
    /// Whether kubelet should hear "RegistryUnavailable": the registry could not be reached or served.
    pub fn unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    fn retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Stalled { .. } => true,
            RegistryError::Server { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// One place to get content from: a mirror or the registry itself.
#[derive(Clone)]
struct Endpoint {
    /// `scheme://host[:port]`, without `/v2`.
    base: String,
    /// The host whose config and credentials apply.
    host: String,
    mirror: bool,
    client: reqwest::Client,
    credentials: Option<Credentials>,
}

/// What a successful GET returned.
pub struct Fetched {
    pub response: reqwest::Response,
    pub url: String,
}

struct CachedToken {
    header: HeaderValue,
    expires: Instant,
}

/// The client for all registries; cheap to share.
pub struct Registry {
    options: RegistryOptions,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

static CRYPTO: Once = Once::new();

impl Registry {
    pub fn new(options: RegistryOptions) -> Registry {
        // reqwest's rustls needs a process-wide crypto provider; ring builds without a C toolchain step.
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        Registry { options, clients: Mutex::new(HashMap::new()), tokens: Mutex::new(HashMap::new()) }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    fn client_for(&self, host: &str) -> Result<reqwest::Client, RegistryError> {
        if let Some(client) = self.clients.lock().unwrap().get(host) {
            return Ok(client.clone());
        }
        let config = self.options.hosts.get(host).cloned().unwrap_or_default();
        let fail = |reason: String| RegistryError::Client { host: host.to_owned(), reason };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.options.connect_timeout)
            .read_timeout(self.options.stall_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy();
        if let Some(ca_file) = &config.ca_file {
            let pem =
                std::fs::read(ca_file).map_err(|e| fail(format!("cannot read ca_file {}: {e}", ca_file.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(format!("ca_file {} is not a PEM bundle: {e}", ca_file.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem =
                std::fs::read(cert).map_err(|e| fail(format!("cannot read client_cert {}: {e}", cert.display())))?;
            pem.extend(std::fs::read(key).map_err(|e| fail(format!("cannot read client_key {}: {e}", key.display())))?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| fail(format!("bad client certificate or key: {e}")))?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| fail(e.to_string()))?;
        self.clients.lock().unwrap().insert(host.to_owned(), client.clone());
        Ok(client)
    }

    fn endpoints(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<Endpoint>, RegistryError> {
        let host = reference.registry.as_str();
        let config = self.options.hosts.get(host).cloned().unwrap_or_default();
        let mut endpoints = Vec::new();
        for mirror in &config.mirrors {
            let base = mirror.trim_end_matches('/').trim_end_matches("/v2").to_owned();
            let mirror_host = base.split("://").nth(1).unwrap_or(&base).split('/').next().unwrap_or("").to_owned();
            let mirror_credentials = self.options.hosts.get(&mirror_host).and_then(|c| c.credentials.clone());
            endpoints.push(Endpoint {
                client: self.client_for(&mirror_host)?,
                base,
                host: mirror_host,
                mirror: true,
                credentials: mirror_credentials,
            });
        }
        let scheme = if config.insecure { "http" } else { "https" };
        let address = if host == DOCKER_HUB { "registry-1.docker.io" } else { host };
        endpoints.push(Endpoint {
            base: format!("{scheme}://{address}"),
            client: self.client_for(host)?,
            host: host.to_owned(),
            mirror: false,
            credentials: credentials.cloned().or(config.credentials),
        });
        Ok(endpoints)
    }

    /// GETs `/v2/<repository>/<kind>/<target>` from the first endpoint that has it. `offset` asks for the
    /// rest of a blob from that byte (resuming an interrupted download).
    pub async fn get(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        kind: &str,
        target: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<Fetched, RegistryError> {
        let endpoints = self.endpoints(reference, credentials)?;
        let mut last = None;
        for endpoint in &endpoints {
            let url = format!("{}/v2/{}/{kind}/{target}", endpoint.base, reference.repository);
            let attempts = if endpoint.mirror { 1 } else { self.options.attempts.max(1) };
            match self.get_with_retries(endpoint, reference, &url, accept, offset, attempts).await {
                Ok(response) => return Ok(Fetched { response, url }),
                Err(err) if endpoint.mirror => {
                    tracing::info!(mirror = %endpoint.base, error = %crate::chain(&err), "mirror failed; trying the next endpoint");
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.expect("at least the registry itself is an endpoint"))
    }

    async fn get_with_retries(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        url: &str,
        accept: Option<&str>,
        offset: u64,
        attempts: u32,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut backoff = self.options.first_backoff;
        let mut attempt = 1;
        loop {
            match self.get_once(endpoint, reference, url, accept, offset).await {
                Ok(response) => return Ok(response),
                Err(err) if attempt < attempts && err.retryable() => {
                    tracing::debug!(%url, attempt, error = %crate::chain(&err), "retrying after a transient failure");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn get_once(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        url: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<reqwest::Response, RegistryError> {
        let default_scope = format!("repository:{}:pull", reference.repository);
        let mut authorized = false;
        loop {
            let mut request = endpoint.client.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if offset > 0 {
                request = request.header(RANGE, format!("bytes={offset}-"));
            }
            if let Some(header) = self.cached_auth(endpoint, &default_scope) {
                request = request.header(AUTHORIZATION, header);
            }
            let response = self.send(request, url).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !authorized {
                authorized = true;
                let challenge =
                    response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                self.authorize(endpoint, url, &challenge, &default_scope).await?;
                continue;
            }
            return match status {
                s if s.is_success() => {
                    if offset > 0 && s != StatusCode::PARTIAL_CONTENT {
                        return Err(RegistryError::NoResume { url: url.to_owned() });
                    }
                    Ok(response)
                }
                StatusCode::UNAUTHORIZED => Err(RegistryError::Unauthorized {
                    url: url.to_owned(),
                    hint: if endpoint.credentials.is_some() {
                        "the credentials were refused"
                    } else {
                        "credentials are needed"
                    },
                }),
                StatusCode::FORBIDDEN => Err(RegistryError::Denied { url: url.to_owned() }),
                StatusCode::NOT_FOUND => {
                    Err(RegistryError::NotFound { url: url.to_owned(), what: reference.to_string() })
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    Err(RegistryError::Server { url: url.to_owned(), status: s })
                }
                s => Err(RegistryError::Status { url: url.to_owned(), status: s }),
            };
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, RegistryError> {
        // read_timeout covers each read, so waiting for headers is bounded by the stall timeout too.
        request.send().await.map_err(|source| {
            if source.is_timeout() {
                RegistryError::Stalled { url: url.to_owned(), seconds: self.options.stall_timeout.as_secs() }
            } else {
                RegistryError::Unreachable { url: url.to_owned(), source }
            }
        })
    }

    fn cached_auth(&self, endpoint: &Endpoint, scope: &str) -> Option<HeaderValue> {
        if let Some(Credentials::RegistryToken(token)) = &endpoint.credentials {
            return bearer(token);
        }
        let mut tokens = self.tokens.lock().unwrap();
        let key = (endpoint.host.clone(), scope.to_owned());
        match tokens.get(&key) {
            Some(token) if token.expires > Instant::now() => Some(token.header.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Answers a 401 challenge: finds the header to send and caches it for the host and scope.
    async fn authorize(
        &self,
        endpoint: &Endpoint,
        url: &str,
        challenge: &str,
        scope: &str,
    ) -> Result<(), RegistryError> {
        let unauthorized = |hint| RegistryError::Unauthorized { url: url.to_owned(), hint };
        let (scheme, params) = parse_challenge(challenge);
        let (header, lifetime) = match scheme.to_ascii_lowercase().as_str() {
            "basic" => match &endpoint.credentials {
                Some(Credentials::Basic { username, password }) => {
                    (basic(username, password), Duration::from_secs(3600))
                }
                Some(_) => return Err(unauthorized("the registry wants a username and password")),
                None => return Err(unauthorized("credentials are needed")),
            },
            "bearer" => {
                let realm =
                    params.get("realm").cloned().ok_or_else(|| unauthorized("the Bearer challenge names no realm"))?;
                let scope = params.get("scope").cloned().unwrap_or_else(|| scope.to_owned());
                self.fetch_token(endpoint, &realm, params.get("service").map(String::as_str), &scope).await?
            }
            _ => return Err(unauthorized("the registry sent no usable WWW-Authenticate challenge")),
        };
        let key = (endpoint.host.clone(), scope.to_owned());
        self.tokens.lock().unwrap().insert(key, CachedToken { header, expires: Instant::now() + lifetime });
        Ok(())
    }

    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(HeaderValue, Duration), RegistryError> {
        let token_error = |reason: String| RegistryError::Token { realm: realm.to_owned(), reason };
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let separator = if realm.contains('?') { '&' } else { '?' };
        let query_string = query.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
        let token_url = format!("{realm}{separator}{query_string}");
        let request = match &endpoint.credentials {
            Some(Credentials::IdentityToken(token)) => {
                let mut form =
                    vec![("grant_type", "refresh_token"), ("refresh_token", token.as_str()), ("client_id", "berth")];
                form.extend(query.iter().copied());
                let body = form.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
                endpoint.client.post(realm).header(CONTENT_TYPE, "application/x-www-form-urlencoded").body(body)
            }
            Some(Credentials::Basic { username, password }) => {
                endpoint.client.get(&token_url).header(AUTHORIZATION, basic(username, password))
            }
            _ => endpoint.client.get(&token_url),
        };
        let response = self.send(request, realm).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                url: realm.to_owned(),
                hint: if endpoint.credentials.is_some() {
                    "the credentials were refused"
                } else {
                    "credentials are needed"
                },
            });
        }
        if !status.is_success() {
            return Err(token_error(format!("HTTP {status}")));
        }
        let body = read_limited(response, realm, 1 << 20, self.options.stall_timeout).await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| token_error(format!("not a token answer: {e}")))?;
        let token =
            answer.token.or(answer.access_token).ok_or_else(|| token_error("the answer holds no token".into()))?;
        // The spec's default lifetime is 60 s; leave a margin so a token never expires in flight.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(10) - 5);
        Ok((bearer(&token).ok_or_else(|| token_error("the token is not a valid header value".into()))?, lifetime))
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes and stalls.
pub async fn read_limited(
    mut response: reqwest::Response,
    url: &str,
    limit: usize,
    stall: Duration,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    loop {
        match next_chunk(&mut response, url, stall).await? {
            Some(chunk) => {
                if body.len() + chunk.len() > limit {
                    return Err(RegistryError::TooLarge { url: url.to_owned(), limit });
                }
                body.extend_from_slice(&chunk);
            }
            None => return Ok(body),
        }
    }
}

/// The next piece of a body, or `None` at its end; no byte within `stall` is an error.
pub async fn next_chunk(
    response: &mut reqwest::Response,
    url: &str,
    stall: Duration,
) -> Result<Option<bytes::Bytes>, RegistryError> {
    let stalled = || RegistryError::Stalled { url: url.to_owned(), seconds: stall.as_secs() };
    match tokio::time::timeout(stall, response.chunk()).await {
        Err(_) => Err(stalled()),
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(source)) if source.is_timeout() => Err(stalled()),
        Ok(Err(source)) => Err(RegistryError::Unreachable { url: url.to_owned(), source }),
    }
}

fn basic(username: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `Bearer realm="...",service="...",scope="..."` into the scheme and its parameters.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remaining.trim_start_matches([',', ' ']);
    }
    (scheme.to_owned(), params)
}

/// A shared handle, as the image store keeps it.
pub type SharedRegistry = Arc<Registry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/busybox:pull");
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((scheme.as_str(), params["realm"].as_str()), ("Basic", "Registry Realm"));
    }

    #[test]
    fn credentials_never_print() {
        let shown = format!(
            "{:?} {:?} {:?}",
            Credentials::Basic { username: "u".into(), password: "hunter2".into() },
            Credentials::IdentityToken("idtok".into()),
            Credentials::RegistryToken("regtok".into())
        );
        assert!(!shown.contains("hunter2") && !shown.contains("idtok") && !shown.contains("regtok"), "{shown}");
        assert_eq!(
            Credentials::from_auth("dTpodW50ZXIy"),
            Some(Credentials::Basic { username: "u".into(), password: "hunter2".into() })
        );
    }
}
