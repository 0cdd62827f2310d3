//! STUB — being written (per-parameter optimizer state and updates).
