//! STUB — being written: sparse index encodings and selection.
