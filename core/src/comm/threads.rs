//! STUB — being written: in-process multi-worker communicator (threads + channels).

use regimen_plugin::compress::WireElement;

use super::{CommError, Communicator, Traffic};

/// STUB
pub struct ThreadCluster;

impl ThreadCluster {
    /// STUB: one communicator per simulated worker.
    pub fn new(world: usize) -> Vec<ThreadCommunicator> {
        (0..world)
            .map(|rank| ThreadCommunicator { rank, world })
            .collect()
    }
}

/// STUB
pub struct ThreadCommunicator {
    rank: usize,
    world: usize,
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn allreduce_f32(&mut self, _data: &mut [f32]) -> Result<(), CommError> {
        Err(CommError::Invalid {
            rank: self.rank,
            message: "stub".into(),
        })
    }
    fn allreduce_wire(&mut self, _e: WireElement, _data: &mut [u8]) -> Result<(), CommError> {
        Err(CommError::Invalid {
            rank: self.rank,
            message: "stub".into(),
        })
    }
    fn allgather(&mut self, _p: &[u8], _out: &mut Vec<Vec<u8>>) -> Result<(), CommError> {
        Err(CommError::Invalid {
            rank: self.rank,
            message: "stub".into(),
        })
    }
    fn broadcast(&mut self, _root: usize, _data: &mut Vec<u8>) -> Result<(), CommError> {
        Err(CommError::Invalid {
            rank: self.rank,
            message: "stub".into(),
        })
    }
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
}
