//! ImageFsInfo: how much of its filesystem the image store uses. kubelet's image garbage collection and
//! disk-pressure eviction are driven by these numbers, and every client calls it on connect.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::context::Context;
use crate::cri::v1::{FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value};
use crate::disk_usage;
use crate::error::RpcError;

pub async fn handle(context: &Context, _request: ImageFsInfoRequest) -> Result<ImageFsInfoResponse, RpcError> {
    let images = context.layout.images();
    let path = images.clone();
    let usage = context
        .blocking("measure the image filesystem", move || {
            disk_usage::measure(&path).map_err(|source| RpcError::DiskUsage { path, source })
        })
        .await?;
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(1);
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier { mountpoint: images.display().to_string() }),
            used_bytes: Some(UInt64Value { value: usage.bytes }),
            inodes_used: Some(UInt64Value { value: usage.inodes }),
        }],
        // Images and writable layers share one filesystem; an empty list tells kubelet so.
        container_filesystems: Vec::new(),
    })
}
