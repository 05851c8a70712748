//! Fuzzes the agent's configuration boundary: a TOML document plus `--set key=value` flag
//! overrides, parsed, overridden and validated. Any input may be refused with an error; none
//! may panic. Input layout: TOML text, then optionally a line `---` and one override a line.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tally_agent::config::{flag_overrides, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml_text, sets) = text.split_once("\n---\n").unwrap_or((text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_owned).collect();
    let Ok(tree) = Config::from_toml_str(toml_text, Path::new("fuzz.toml")) else {
        return;
    };
    let Ok(overrides) = flag_overrides(&sets) else {
        return;
    };
    if let Ok(cfg) = Config::from_tree(tree, &overrides) {
        // A config that validates must keep validating: the agent re-checks it at startup.
        cfg.validate().expect("a validated config stays valid");
    }
});
