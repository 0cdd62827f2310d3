//! Regimen facade.
pub use regimen_core as core;
pub use regimen_dsl as dsl;
