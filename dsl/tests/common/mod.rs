//! Helpers shared by the language's integration tests.

use std::path::Path;

/// Every `*.regimen` file in `dir` (relative to this crate), as (file name, text),
/// sorted by name.
pub fn scripts_in(dir: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut scripts: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "regimen"))
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?.to_string();
                    Some((name, std::fs::read_to_string(&p).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    scripts.sort();
    scripts
}
