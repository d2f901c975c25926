//! Image volumes (Kubernetes' `image` volume source): CreateContainer with `Mount.image`, as kubelet sends
//! it after pulling the volume's image (an empty host path, the image by id, the user's name beside it).
//! The content is the image's layers, read-only and not executable, in place; a sub path is resolved
//! inside the image; failures name the volume and leave nothing mounted.

use berth::cri::v1::*;
use tonic::Code;

use crate::containers::{leftovers, start_daemon};
use crate::support::cri::{
    container_config, create, create_refused, exec_out, pull, run_pod, start, stop_and_remove_pod,
};
use crate::support::registry::TestRegistry;

fn image_volume(destination: &str, image: &str, sub_path: &str) -> Mount {
    Mount {
        container_path: destination.into(),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

fn volume_mounts(dirs: &crate::support::DaemonDirs) -> Vec<String> {
    let volumes = dirs.root().join("images/containers");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ').nth(4).is_some_and(|t| t.starts_with(volumes.to_str().unwrap()) && t.contains("/volumes/"))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_image_volume_shows_the_image_read_only_and_survives_the_image_being_removed() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    // web: busybox's layer and one with /www (an overlay of two layers); busybox alone: one layer (a bind).
    let web = &registry.image("web").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    pull(&mut client, web).await;
    let web_id = client
        .image
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec { image: web.clone(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("web is present")
        .id;
    let logs = dirs.path().join("logs");
    let pod_config = crate::support::cri::pod_config("volumes", &logs, crate::support::cri::node_network());
    let pod = run_pod(&mut client, &pod_config).await;

    let mut config = container_config("reader", busybox, &["sleep", "1000"]);
    config.mounts = vec![
        // by id, as kubelet names it
        image_volume("/web", &web_id, ""),
        image_volume("/tools", busybox, "bin"),
        image_volume("/etc-link", busybox, "etc/../../../etc"),
    ];
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    assert_eq!(volume_mounts(&dirs).len(), 3, "three image volumes mounted on the host");

    let (code, out) = exec_out(&mut client, &id, &["cat", "/web/www/index.html"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.is_empty());
    let (code, out) =
        exec_out(&mut client, &id, &["ls", "/web/bin/busybox", "/tools/busybox", "/etc-link/passwd"]).await;
    assert_eq!(code, 0, "the lower layer, the sub path and a sub path with .. kept inside the image: {out}");
    let (code, out) = exec_out(&mut client, &id, &["touch", "/web/www/new"]).await;
    assert_ne!(code, 0, "an image volume is read-only: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = exec_out(&mut client, &id, &["sh", "-c", "/tools/busybox true"]).await;
    assert_eq!(code, 126, "an image volume is noexec: {out}");
    let (_, mountinfo) = exec_out(&mut client, &id, &["cat", "/proc/self/mountinfo"]).await;
    for destination in ["/web", "/tools", "/etc-link"] {
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(destination))
            .unwrap_or_else(|| panic!("{destination} is not a mount: {mountinfo}"));
        let options = line.split(' ').nth(5).unwrap();
        for option in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(options.split(',').any(|o| o == option), "{destination} lacks {option}: {line}");
        }
    }

    // Removing the image while the volume is in use keeps its layers: the volume still reads.
    client
        .image
        .remove_image(RemoveImageRequest { image: Some(ImageSpec { image: web.clone(), ..Default::default() }) })
        .await
        .expect("RemoveImage");
    let (code, out) = exec_out(&mut client, &id, &["cat", "/web/www/index.html"]).await;
    assert_eq!(code, 0, "the volume outlives its image record: {out}");

    stop_and_remove_pod(&mut client, &pod).await;
    assert_eq!(volume_mounts(&dirs), Vec::<String>::new(), "every image volume is unmounted");
    let left = leftovers(&dirs, std::slice::from_ref(&id));
    assert!(left.is_empty(), "{left:#?}");
}

#[tokio::test]
async fn a_missing_image_or_sub_path_fails_create_container_naming_the_volume_and_leaves_nothing_mounted() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = crate::support::cri::pod_config("volumes", &logs, crate::support::cri::node_network());
    let pod = run_pod(&mut client, &pod_config).await;

    // The second volume fails after the first was mounted: the first must be undone too.
    let mut config = container_config("absent", busybox, &["sleep", "1000"]);
    config.mounts = vec![image_volume("/fine", busybox, ""), image_volume("/data", "localhost/invalid:1", "")];
    let status = create_refused(&mut client, &pod, &pod_config, config).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("/data") && status.message().contains("localhost/invalid"), "{status:?}");
    assert_eq!(volume_mounts(&dirs), Vec::<String>::new());

    let mut config = container_config("subpath", busybox, &["sleep", "1000"]);
    config.mounts = vec![image_volume("/fine", busybox, ""), image_volume("/data", busybox, "not-existing")];
    let status = create_refused(&mut client, &pod, &pod_config, config).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("/data") && status.message().contains("not-existing"), "{status:?}");
    assert_eq!(volume_mounts(&dirs), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(dirs.root().join("images/containers")).map(|d| d.count()).unwrap_or(0),
        0,
        "no container directory is left"
    );

    stop_and_remove_pod(&mut client, &pod).await;
}
