//! STUB — being written (the stepper).
/// Steps a bound strategy.
pub struct Stepper<B> {
    _backend: B,
}
