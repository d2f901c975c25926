//! berth's image store: everything between an image reference and a container's root filesystem.
//!
//! Owns: parsing references ([`reference`]), the OCI distribution client ([`registry`]), manifests and
//! platform selection ([`manifest`]), the verified content store and layer snapshots ([`store`]), applying
//! untrusted layer tarballs ([`unpack`]), overlay root filesystems for containers ([`rootfs`]) and garbage
//! collection. Leaves to others: CRI types (the `berth` package translates), and everything about running
//! containers. Image metadata lives in the daemon's state database (`berth_store`, table `images`).

pub mod digest;
pub mod image_volume;
pub mod manifest;
pub mod reference;
pub mod unpack;

pub mod layer;
pub mod registry;
pub mod rootfs;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod test_tar;

pub use digest::Digest;
pub use reference::Reference;
pub use registry::{Credentials, HostConfig, RegistryOptions};
pub use rootfs::RootfsError;
pub use store::{GcStats, ImageError, ImageRecord, ImageStore, PullError, PullEvent, StoreOptions};

pub use berth_error_kind::chain;
