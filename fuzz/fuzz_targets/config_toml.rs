//! berth's configuration file. Whatever the text, parsing ends in a configuration or in an error that names
//! a line of the text; a configuration that parses can be shown (Status verbose) without its credentials.
#![no_main]

use std::path::Path;

use berth::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(Path::new("/etc/berth/config.toml"), text) {
        Ok(config) => {
            let shown = config.redacted();
            let _ = serde_json::to_string(&shown).expect("a configuration serializes");
        }
        Err(ConfigError::Invalid { line, .. }) => {
            assert!(line >= 1 && line <= text.matches('\n').count() + 1, "error line {line} is not in the text");
        }
        Err(other) => panic!("parsing text failed with a non-parse error: {other}"),
    }
});
