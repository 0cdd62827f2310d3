//! Library-level misbehaviour of a plugin: another ABI major version, an export of
//! unknown kind, a name clash with a built-in. The bad plugin chooses the
//! misbehaviour from `REGIMEN_BAD_PLUGIN` when its entry point runs, so the cases run
//! one after the other in this binary's only test, each on its own copy of the
//! library (a fresh path is a fresh load, so the entry point runs again).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod plugin_support;

use regimen_core::loader::{Plugin, PluginError};

#[test]
fn abi_mismatch_unknown_kind_and_name_clash_are_refused() {
    let original = plugin_support::library("regimen-bad-plugin");
    let dir = tempfile::tempdir().unwrap();
    let load = |mode: &str| {
        let copy = dir.path().join(format!("libbad_{mode}.so"));
        std::fs::copy(&original, &copy).unwrap();
        std::env::set_var("REGIMEN_BAD_PLUGIN", mode);
        let result = Plugin::load(&copy, None);
        std::env::remove_var("REGIMEN_BAD_PLUGIN");
        (copy, result)
    };

    let (path, result) = load("abi");
    let error = result.unwrap_err();
    assert!(
        matches!(error, PluginError::AbiMismatch { found: 2, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {}: built for plugin ABI 2, this Regimen speaks ABI 1; rebuild it against regimen-plugin 1.x",
            path.display()
        )
    );

    let (path, result) = load("kind");
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {}: export `bad` has unknown kind code 7 (known: 1 compressor, 2 batch controller)",
            path.display()
        )
    );

    let (path, result) = load("clash");
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "plugin {}: export `topk` clashes with the built-in compressor `topk`; rename it in the plugin",
            path.display()
        )
    );

    // The same library without a mode loads.
    let (_, result) = load("");
    let plugin = result.unwrap();
    assert_eq!(plugin.exports().len(), 2);
}
