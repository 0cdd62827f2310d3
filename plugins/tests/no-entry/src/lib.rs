//! A shared library that is not a Regimen plugin: it exports a C function, but not
//! the entry symbol, so the loader's "missing entry symbol" error can be tested.
#![allow(unsafe_code)]

/// Anything but `regimen_plugin_entry`.
#[no_mangle]
pub extern "C" fn not_a_regimen_plugin() -> u32 {
    42
}
