//! Regimen language.
