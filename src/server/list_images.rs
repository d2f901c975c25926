//! ListImages: every image, or those the filter's reference (ID, tag or digest) names.

use crate::context::Context;
use crate::cri::v1::{Image, ListImagesRequest, ListImagesResponse};
use crate::error::RpcError;
use crate::images::to_cri;

pub async fn handle(context: &Context, request: ListImagesRequest) -> Result<ListImagesResponse, RpcError> {
    Ok(ListImagesResponse { images: list(context, request.filter.and_then(|f| f.image).map(|s| s.image)).await? })
}

/// The images matching `filter` (all when it is empty), in a stable order (by first tag, then ID).
pub async fn list(context: &Context, filter: Option<String>) -> Result<Vec<Image>, RpcError> {
    let mut records = context.images.list().await?;
    if let Some(filter) = filter.filter(|f| !f.trim().is_empty()) {
        let found = berth_image::store::find_in(&records, &filter).cloned();
        records = found.into_iter().collect();
    }
    records.sort_by(|a, b| (a.repo_tags.first(), &a.id).cmp(&(b.repo_tags.first(), &b.id)));
    Ok(records.iter().map(to_cri).collect())
}
