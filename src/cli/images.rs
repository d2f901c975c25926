//! The image verbs, like crictl's: `berth pull`, `berth images`, `berth rmi`, `berth inspecti`.
//!
//! `berth pull` shows per-layer progress while the pull runs (berth's own `Pulls.Watch` beside the CRI's
//! PullImage, which has no progress messages): bars redrawn in place on a terminal, a line per layer start
//! and end otherwise. Then one line with the image ID, bytes, time and MB/s.

use std::time::Instant;

use serde::Serialize;

use super::client::{Client, rpc_failed};
use super::output::{OutputFormat, print, table};
use super::progress;
use crate::cri::v1::{
    AuthConfig, Image, ImageFilter, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_owned(), ..Default::default() })
}

/// `berth pull IMAGE [--creds USER:PASSWORD]`.
pub async fn pull(mut client: Client, image: String, creds: Option<String>) -> Result<(), String> {
    let auth = match creds {
        Some(creds) => {
            let (username, password) = creds.split_once(':').ok_or("--creds takes USER:PASSWORD")?;
            Some(AuthConfig { username: username.to_owned(), password: password.to_owned(), ..Default::default() })
        }
        None => None,
    };
    let started = Instant::now();
    let watcher = tokio::spawn(progress::show(client.pulls.clone(), image.clone()));
    let pulled = client.image.pull_image(PullImageRequest { image: spec(&image), auth, sandbox_config: None }).await;
    // The watcher ends with the pull; give it a moment to print the last state, no more.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), watcher).await;
    let pulled = pulled.map_err(|s| rpc_failed("PullImage", s))?.into_inner();
    let elapsed = started.elapsed();
    let size = client
        .image
        .image_status(ImageStatusRequest { image: spec(&pulled.image_ref), verbose: false })
        .await
        .ok()
        .and_then(|r| r.into_inner().image)
        .map(|i| i.size)
        .unwrap_or(0);
    let mbps = size as f64 / 1e6 / elapsed.as_secs_f64().max(1e-6);
    println!(
        "Image is up to date for {} ({size} bytes in {:.2} s, {mbps:.1} MB/s)",
        pulled.image_ref,
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageView {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    size: u64,
    uid: Option<i64>,
    username: String,
    pinned: bool,
}

fn view(image: Image) -> ImageView {
    ImageView {
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        size: image.size,
        uid: image.uid.map(|u| u.value),
        username: image.username,
        pinned: image.pinned,
    }
}

/// Splits `registry/repo:tag` into the IMAGE and TAG columns crictl shows.
fn split_tag(tag: &str) -> (String, String) {
    let slash = tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    match tag[slash..].rfind(':') {
        Some(colon) => (tag[..slash + colon].to_owned(), tag[slash + colon + 1..].to_owned()),
        None => (tag.to_owned(), "<none>".to_owned()),
    }
}

/// `berth images [IMAGE]`.
pub async fn list(mut client: Client, filter: Option<String>, format: OutputFormat) -> Result<(), String> {
    let request = ListImagesRequest { filter: filter.map(|f| ImageFilter { image: spec(&f) }) };
    let images = client.image.list_images(request).await.map_err(|s| rpc_failed("ListImages", s))?.into_inner().images;
    let views: Vec<ImageView> = images.into_iter().map(view).collect();
    print(format, &views, |views| {
        let mut rows = Vec::new();
        for image in views {
            let short = image.id.trim_start_matches("sha256:").chars().take(13).collect::<String>();
            let tags =
                if image.repo_tags.is_empty() { vec!["<none>:<none>".to_owned()] } else { image.repo_tags.clone() };
            for tag in tags {
                let (name, tag) = split_tag(&tag);
                rows.push(vec![name, tag, short.clone(), human_size(image.size)]);
            }
        }
        table(&["IMAGE", "TAG", "IMAGE ID", "SIZE"], &rows)
    })
}

/// `berth rmi IMAGE...`.
pub async fn remove(mut client: Client, images: Vec<String>) -> Result<(), String> {
    for image in images {
        client
            .image
            .remove_image(RemoveImageRequest { image: spec(&image) })
            .await
            .map_err(|s| rpc_failed("RemoveImage", s))?;
        println!("Deleted: {image}");
    }
    Ok(())
}

/// `berth inspecti IMAGE`: the status with the image config (verbose info), as JSON or YAML.
pub async fn inspect(mut client: Client, image: String, format: OutputFormat) -> Result<(), String> {
    let answer = client
        .image
        .image_status(ImageStatusRequest { image: spec(&image), verbose: true })
        .await
        .map_err(|s| rpc_failed("ImageStatus", s))?
        .into_inner();
    let Some(found) = answer.image else {
        return Err(format!("no such image: {image}"));
    };
    let info: serde_json::Value =
        answer.info.get("info").and_then(|i| serde_json::from_str(i).ok()).unwrap_or(serde_json::Value::Null);
    let value = serde_json::json!({ "status": view(found), "info": info });
    let format = if format == OutputFormat::Table { OutputFormat::Json } else { format };
    print(format, &value, |v| v.to_string())
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{value:.3}{}", units[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_port() {
        assert_eq!(split_tag("127.0.0.1:5000/a/b:v1"), ("127.0.0.1:5000/a/b".to_owned(), "v1".to_owned()));
        assert_eq!(human_size(1_234_567), "1.235MB");
    }
}
