//! The communicator of a run with one worker: every collective is the identity and
//! nothing goes on the wire.

use regimen_plugin::compress::WireElement;

use super::{CommError, Communicator, Traffic};

/// World size 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn allreduce_f32(&mut self, _data: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }

    fn allreduce_wire(&mut self, element: WireElement, data: &mut [u8]) -> Result<(), CommError> {
        if data.len() % element.size() != 0 {
            return Err(CommError::Invalid {
                rank: 0,
                message: format!(
                    "{} bytes is not a whole number of {} elements",
                    data.len(),
                    element.name()
                ),
            });
        }
        Ok(())
    }

    fn allgather(&mut self, payload: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CommError> {
        out.resize_with(1, Vec::new);
        out[0].clear();
        out[0].extend_from_slice(payload);
        Ok(())
    }

    fn broadcast(&mut self, root: usize, _data: &mut Vec<u8>) -> Result<(), CommError> {
        if root != 0 {
            return Err(CommError::Invalid {
                rank: 0,
                message: format!("broadcast root {root} outside a world of 1"),
            });
        }
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
}
