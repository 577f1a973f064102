//! The TOML configuration: a clear error or a config, never a panic; a config it accepts
//! renders back to TOML that it accepts again.
#![no_main]

use cosmos_workflow::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_toml(text, Path::new("fuzz.toml")) {
        let again = config.to_toml();
        assert!(Config::from_toml(&again, Path::new("again.toml")).is_ok(), "rendered config refused:\n{again}");
    }
});
