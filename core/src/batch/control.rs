//! placeholder
/// placeholder
pub struct BatchControl;
/// placeholder
pub struct BatchReport;
/// placeholder
pub struct SmallBatchNorms;
