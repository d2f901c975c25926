//! PullImage: fetch an image into the store and answer its ID (the config digest), which is the
//! `image_ref` kubelet then puts into CreateContainer.
//!
//! Credentials come from the request's AuthConfig (kubelet's image pull secrets), else from the
//! registry's `[registries]` entry; they are never logged. The request's gRPC deadline is enforced here,
//! slightly before the trace layer's timer (`server::trace`), so a pull that runs out of time is cancelled
//! (its partial content removed) and its DeadlineExceeded names the image.

use std::time::{Duration, Instant};

use berth_image::Credentials;

use crate::context::Context;
use crate::cri::v1::{AuthConfig, PullImageRequest, PullImageResponse};
use crate::error::RpcError;
use crate::server::trace::{DEADLINE_HEADER, record_id};

pub async fn handle(
    context: &Context,
    request: PullImageRequest,
    deadline: Option<Duration>,
) -> Result<PullImageResponse, RpcError> {
    let image = request.image.map(|spec| spec.image).unwrap_or_default();
    if image.trim().is_empty() {
        return Err(RpcError::InvalidArgument { field: "image.image", reason: "the image reference is empty".into() });
    }
    record_id("image", &image);
    let credentials = request.auth.and_then(credentials);
    let started = Instant::now();
    let progress = context.pulls.track(image.clone());
    let pull = context.images.pull(&image, credentials, Some(progress));
    let pulled = match deadline {
        // Answer a little before the client's deadline, so this answer, which names the image, is the one
        // it sees.
        Some(deadline) => {
            let budget = deadline.saturating_sub(Duration::from_millis(50).min(deadline / 10));
            tokio::time::timeout(budget, pull).await.map_err(|_| RpcError::PullDeadline {
                reference: image.clone(),
                seconds: started.elapsed().as_secs_f64(),
            })?
        }
        None => pull.await,
    };
    let record = pulled.map_err(|source| RpcError::Pull { reference: image.clone(), source: Box::new(source) })?;
    tracing::info!(image = %image, id = %record.id, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
    Ok(PullImageResponse { image_ref: record.id.to_string() })
}

fn credentials(auth: AuthConfig) -> Option<Credentials> {
    if !auth.registry_token.is_empty() {
        return Some(Credentials::RegistryToken(auth.registry_token));
    }
    if !auth.identity_token.is_empty() {
        return Some(Credentials::IdentityToken(auth.identity_token));
    }
    if !auth.username.is_empty() {
        return Some(Credentials::Basic { username: auth.username, password: auth.password });
    }
    if !auth.auth.is_empty() {
        return Credentials::from_auth(&auth.auth);
    }
    None
}

/// The deadline a gRPC client set (its `grpc-timeout`: an integer and a unit, H M S m u n), which reaches
/// the handlers as [`DEADLINE_HEADER`].
pub fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get(DEADLINE_HEADER)?.to_str().ok()?;
    let (number, unit) = value.split_at(value.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(number.saturating_mul(3600)),
        "M" => Duration::from_secs(number.saturating_mul(60)),
        "S" => Duration::from_secs(number),
        "m" => Duration::from_millis(number),
        "u" => Duration::from_micros(number),
        "n" => Duration::from_nanos(number),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_becomes_credentials() {
        let basic = AuthConfig { username: "u".into(), password: "p".into(), ..Default::default() };
        assert_eq!(credentials(basic), Some(Credentials::Basic { username: "u".into(), password: "p".into() }));
        let auth = AuthConfig { auth: "dTpw".into(), ..Default::default() };
        assert_eq!(credentials(auth), Some(Credentials::Basic { username: "u".into(), password: "p".into() }));
        let token = AuthConfig { registry_token: "t".into(), ..Default::default() };
        assert_eq!(credentials(token), Some(Credentials::RegistryToken("t".into())));
        assert_eq!(credentials(AuthConfig::default()), None);
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(DEADLINE_HEADER, "1500m".parse().unwrap());
        assert_eq!(grpc_deadline(&metadata), Some(Duration::from_millis(1500)));
        metadata.insert(DEADLINE_HEADER, "2M".parse().unwrap());
        assert_eq!(grpc_deadline(&metadata), Some(Duration::from_secs(120)));
    }
}
