//! STUB — being written: bit packing.
