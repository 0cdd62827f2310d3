//! Communication between data-parallel workers: the [`Communicator`] trait the runtime
//! exchanges gradients through, a single-process implementation ([`SingleProcess`])
//! and an in-process multi-worker implementation ([`ThreadCluster`], threads and
//! channels) that tests and benchmarks use to simulate W workers. An MPI
//! implementation joins behind the same trait later, so the trait follows MPI's
//! constraints: one thread owns a communicator (it is `Send`, not `Sync`), every
//! collective is called by all ranks in the same order, and variable-length payloads
//! have their sizes exchanged before the data (as `MPI_Allgatherv` needs).
//!
//! Bytes are counted where they leave and enter a rank ([`Traffic`]), never estimated.

use regimen_plugin::compress::WireElement;
use thiserror::Error;

mod single;
mod threads;

pub use single::SingleProcess;
pub use threads::{ThreadCluster, ThreadCommunicator};

/// Bytes and messages a communicator has moved since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes this rank sent.
    pub bytes_sent: u64,
    /// Bytes this rank received.
    pub bytes_received: u64,
    /// Messages this rank sent.
    pub messages_sent: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            messages_sent: self.messages_sent.saturating_sub(earlier.messages_sent),
        }
    }
}

/// Why a collective failed. After an error the communicator is unusable: the other
/// ranks see the failure too (as a disconnected peer) rather than waiting forever.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CommError {
    /// A peer went away (its thread ended or failed).
    #[error("rank {rank}: peer rank {peer} disconnected")]
    PeerGone {
        /// This rank.
        rank: usize,
        /// The peer.
        peer: usize,
    },
    /// A peer did not answer within the timeout.
    #[error("rank {rank}: no message from rank {peer} within {seconds} s")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The peer waited for.
        peer: usize,
        /// The timeout.
        seconds: u64,
    },
    /// The ranks called collectives that do not match (different lengths or kinds).
    #[error("rank {rank}: collective mismatch: {message}")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// What differs.
        message: String,
    },
    /// A bad argument (a root outside the world, a data length that is not a multiple
    /// of the element size, …).
    #[error("rank {rank}: {message}")]
    Invalid {
        /// This rank.
        rank: usize,
        /// What is wrong.
        message: String,
    },
}

/// Collectives over the workers of a data-parallel run. Every rank must call the same
/// collectives in the same order with matching lengths.
pub trait Communicator: Send {
    /// This worker's rank in `0..world()`.
    fn rank(&self) -> usize;

    /// Number of workers.
    fn world(&self) -> usize;

    /// Sum `data` elementwise over all ranks, in place; every rank ends with the same
    /// bits.
    fn allreduce_f32(&mut self, data: &mut [f32]) -> Result<(), CommError>;

    /// Sum an array of little-endian `element`s held as bytes (a summable payload's
    /// data section) elementwise over all ranks, in place. Sums are formed in f32 and
    /// rounded to `element` as a real reduction on the wire type would; every rank
    /// ends with the same bits.
    fn allreduce_wire(&mut self, element: WireElement, data: &mut [u8]) -> Result<(), CommError>;

    /// Every rank's `payload` (lengths may differ), in rank order, into `out`
    /// (resized to `world()` entries; the buffers are reused).
    fn allgather(&mut self, payload: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CommError>;

    /// Replace `data` on every rank by `root`'s.
    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CommError>;

    /// Cumulative traffic of this rank.
    fn traffic(&self) -> Traffic;
}
