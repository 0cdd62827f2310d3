//! Regimen plugin SDK (placeholder until the plugin issue).
