//! `berth imagefsinfo`: how much disk the image store uses, like `crictl imagefsinfo`.

use serde::Serialize;

use super::client::{Client, rpc_failed};
use super::output::{OutputFormat, print, table};
use crate::cri::v1::ImageFsInfoRequest;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FilesystemView {
    mountpoint: String,
    used_bytes: u64,
    inodes_used: u64,
    timestamp: i64,
}

pub async fn run(mut client: Client, format: OutputFormat) -> Result<(), String> {
    let answer =
        client.image.image_fs_info(ImageFsInfoRequest {}).await.map_err(|s| rpc_failed("ImageFsInfo", s))?.into_inner();
    let view: Vec<FilesystemView> = answer
        .image_filesystems
        .into_iter()
        .map(|fs| FilesystemView {
            mountpoint: fs.fs_id.map(|id| id.mountpoint).unwrap_or_default(),
            used_bytes: fs.used_bytes.map(|v| v.value).unwrap_or_default(),
            inodes_used: fs.inodes_used.map(|v| v.value).unwrap_or_default(),
            timestamp: fs.timestamp,
        })
        .collect();
    print(format, &view, |filesystems| {
        let rows: Vec<Vec<String>> = filesystems
            .iter()
            .map(|fs| vec![fs.mountpoint.clone(), fs.used_bytes.to_string(), fs.inodes_used.to_string()])
            .collect();
        table(&["MOUNTPOINT", "USED-BYTES", "INODES-USED"], &rows)
    })
}
