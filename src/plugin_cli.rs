//! `regimen plugin inspect PATH`: what a plugin library exports (kind, names, ABI
//! version, argument schema), or why it cannot be loaded.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use regimen::core::loader::Plugin;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a plugin library and print what it exports.
    ///
    /// Prints the plugin's name and version, the ABI it speaks, the file's SHA-256
    /// (to pin in a script: `plugin "…" sha256 "…"`), and each export: its kind
    /// (compressor or batch controller), name, whether its calls are serialized, and
    /// its arguments with their types and defaults. If the library cannot be
    /// loaded, says why and exits with 1.
    #[command(
        after_help = "Examples:\n  regimen plugin inspect target/release/libregimen_natural.so\n  \
                            regimen plugin inspect ./libmine.so --sha256 3f2a…"
    )]
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The shared library (`.so`, `.dylib`, `.dll`); loaded from this path only.
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Refuse to load unless the file's SHA-256 is this (64 hex digits).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
}

pub fn run(command: &PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Inspect(args) => inspect(args),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    match Plugin::load(&args.path, args.sha256.as_deref()) {
        Ok(plugin) => {
            crate::print_stdout(&plugin.describe())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: cannot load the plugin: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
