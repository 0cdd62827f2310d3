//! Builds the workspace's plugin crates (`cargo build -p …`, once per test binary)
//! and says where their shared libraries are. The build goes to its own target
//! directory beside the tests' (`<target>/plugin-tests`), so it never waits on the
//! lock of the `cargo test` that runs us, and works from a clean checkout. An
//! optimized caller (`cargo bench`) gets release builds of the plugins.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plugin crates the tests load.
pub const CRATES: &[&str] = &[
    "regimen-natural",
    "regimen-adabatch",
    "regimen-bad-plugin",
    "regimen-no-entry",
    "regimen-readme-plugin",
];

/// The workspace's `Cargo.toml` (this file is included by test binaries of `core/`
/// and of the root package; both lie inside the workspace).
fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("the workspace root has a Cargo.lock")
        .join("Cargo.toml")
}

/// `<target>` of the running test binary (`<target>/<profile>/deps/test-…`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The folder holding the built plugins (built on first call).
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = target_dir().join("plugin-tests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .arg("build")
            .arg("--manifest-path")
            .arg(workspace_manifest())
            .arg("--target-dir")
            .arg(&target);
        for name in CRATES {
            command.arg("-p").arg(name);
        }
        // A benchmark (optimized) loads optimized plugins; a test, debug ones.
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            command.arg("--release");
            "release"
        };
        // The outer build's flags would make cargo rebuild everything each time.
        command
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        let output = command.output().expect("cargo runs");
        assert!(
            output.status.success(),
            "building the plugin crates failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target.join(profile)
    })
}

/// The shared library of crate `name` (`regimen-natural` → `libregimen_natural.so`).
pub fn library(name: &str) -> PathBuf {
    let stem = name.replace('-', "_");
    plugin_dir().join(format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}
