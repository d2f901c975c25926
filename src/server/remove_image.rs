//! RemoveImage: by ID, tag or digest; the image goes with all its tags (as containerd does), and the
//! blobs and snapshots nothing else uses are collected before the answer. Removing an image that is not
//! there succeeds (kubelet retries removals), so concurrent removals of one image all succeed. Containers
//! using the image keep their layers: their root filesystems hold the snapshots.

use crate::context::Context;
use crate::cri::v1::{RemoveImageRequest, RemoveImageResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: RemoveImageRequest) -> Result<RemoveImageResponse, RpcError> {
    let name = request.image.map(|s| s.image).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(RpcError::InvalidArgument { field: "image.image", reason: "the image reference is empty".into() });
    }
    record_id("image", &name);
    if let Some(removed) = context.images.remove(&name).await? {
        tracing::info!(image = %name, id = %removed.id, tags = ?removed.repo_tags, "image removed");
    }
    Ok(RemoveImageResponse {})
}
