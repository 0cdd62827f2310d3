//! STUB — being written (binding of a strategy to parameters).
/// A strategy bound to parameters.
#[derive(Clone, Debug)]
pub struct Binding;
/// One bound parameter.
#[derive(Clone, Debug)]
pub struct BoundParam;
