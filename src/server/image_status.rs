//! ImageStatus: one image by ID, tag or digest. An unknown image is not an error: the CRI answers it with
//! an empty `image` (kubelet then pulls). Verbose info carries the image config verbatim.

use std::collections::HashMap;

use crate::context::Context;
use crate::cri::v1::{ImageStatusRequest, ImageStatusResponse};
use crate::error::RpcError;
use crate::images::to_cri;

pub async fn handle(context: &Context, request: ImageStatusRequest) -> Result<ImageStatusResponse, RpcError> {
    let name = request.image.map(|s| s.image).unwrap_or_default();
    let Some(record) = context.images.find(&name).await? else {
        return Ok(ImageStatusResponse { image: None, info: HashMap::new() });
    };
    let mut info = HashMap::new();
    if request.verbose {
        let config = context.images.config_bytes(&record).await?;
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap_or(serde_json::Value::Null);
        let verbose = serde_json::json!({
            "imageSpec": config,
            "manifestDigest": record.manifest.to_string(),
            "chainIDs": record.chain_ids.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "pulledAtUnixNanos": record.pulled_at_unix_nanos,
        });
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(ImageStatusResponse { image: Some(to_cri(&record)), info })
}
