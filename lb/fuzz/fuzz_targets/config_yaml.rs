//! `lb --config FILE` parsing and `--backend HOST:PORT` parsing must reject
//! bad input with an error, never a panic.
#![no_main]

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use lb::discovery::BackendTarget;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(source) =
        lb::discovery::file::parse_file_config(text, Path::new("f.yaml"), Duration::from_secs(5))
    {
        assert!(!source.targets.is_empty(), "an accepted file has backends");
        for t in &source.targets {
            // Display of an accepted target parses back to the same target.
            let again = BackendTarget::from_str(&t.to_string())
                .unwrap_or_else(|e| panic!("{t} does not parse back: {e}"));
            assert_eq!(again.to_string(), t.to_string());
        }
    }
    // The whole input, and each line, as a `--backend` value.
    let _ = BackendTarget::from_str(text);
    for line in text.lines().take(64) {
        if let Ok(t) = BackendTarget::from_str(line) {
            let again = BackendTarget::from_str(&t.to_string())
                .unwrap_or_else(|e| panic!("{t} (from {line:?}) does not parse back: {e}"));
            assert_eq!(again.to_string(), t.to_string());
        }
    }
});
