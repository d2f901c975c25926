//! Image references as kubelet and users send them (PullImage, ImageStatus, RemoveImage, CreateContainer).
//! A reference that parses must print as one that parses back to itself: berth stores and compares the
//! printed form.
#![no_main]

use berth_image::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(reference) = text.parse::<Reference>() else { return };
    let printed = reference.to_string();
    let again: Reference =
        printed.parse().unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
    assert_eq!(again, reference, "{text:?} printed as {printed:?} parses to something else");
    assert!(reference.name().starts_with(&reference.registry));
    let _ = (reference.tagged(), reference.target());
    if let Some(digest) = &reference.digest {
        assert!(reference.with_digest(digest).ends_with(&digest.to_string()));
    }
});
