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

#[cfg(feature = "mpi")]
pub mod mpi;
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

/// Bytes of a size message (a little-endian `u64`) in front of variable-length data.
pub const SIZE_BYTES: u64 = 8;

/// The elements `[⌊c·n/W⌋, ⌊(c+1)·n/W⌋)` of block `c` of a ring over `world` ranks.
fn ring_block(n: u64, world: u64, block: u64) -> u64 {
    let at = |c: u64| ((u128::from(c) * u128::from(n)) / u128::from(world)) as u64;
    at(block + 1) - at(block)
}

/// What a ring allreduce (reduce-scatter then allgather) of `n` elements of
/// `element_bytes` each moves at `rank` of `world`: the traffic [`ThreadCluster`]
/// measures (see its module doc), and what the MPI communicator counts per call, since
/// MPI does not report what its algorithms send. Sent `2N − |B_{r+1}| − |B_{r+2}|`,
/// received `2N − |B_r| − |B_{r+1}|`, `2(W−1)` messages; nothing with one rank.
pub fn ring_allreduce_traffic(n: u64, element_bytes: u64, world: usize, rank: usize) -> Traffic {
    let (w, r) = (world as u64, rank as u64);
    if w < 2 {
        return Traffic::default();
    }
    let block = |c: u64| ring_block(n, w, c % w) * element_bytes;
    let total = n * element_bytes;
    Traffic {
        bytes_sent: 2 * total - block(r + 1) - block(r + 2),
        bytes_received: 2 * total - block(r) - block(r + 1),
        messages_sent: 2 * (w - 1),
    }
}

/// What a ring allgather of variable-length payloads (sizes first, [`SIZE_BYTES`]
/// each) moves at `rank`: sent `8(W−1) + Σ_{j≠r+1} |p_j|`, received
/// `8(W−1) + Σ_{j≠r} |p_j|`, `2(W−1)` messages.
pub fn ring_allgather_traffic(sizes: &[u64], rank: usize) -> Traffic {
    let w = sizes.len();
    if w < 2 {
        return Traffic::default();
    }
    let total: u64 = sizes.iter().sum();
    let of = |j: usize| sizes.get(j % w).copied().unwrap_or(0);
    let sizes_bytes = SIZE_BYTES * (w as u64 - 1);
    Traffic {
        bytes_sent: sizes_bytes + total - of(rank + 1),
        bytes_received: sizes_bytes + total - of(rank),
        messages_sent: 2 * (w as u64 - 1),
    }
}

/// What a binomial-tree broadcast of `n` bytes from `root` moves at `rank` (each edge
/// carries the size, then the data).
pub fn tree_broadcast_traffic(n: u64, world: usize, root: usize, rank: usize) -> Traffic {
    let mut traffic = Traffic::default();
    if world < 2 || root >= world {
        return traffic;
    }
    let relative = (rank + world - root) % world;
    let mut distance = 1usize;
    while distance < world {
        if relative < distance && relative + distance < world {
            traffic.bytes_sent += SIZE_BYTES + n;
            traffic.messages_sent += 2;
        }
        distance = distance.saturating_mul(2);
    }
    if relative != 0 {
        traffic.bytes_received = SIZE_BYTES + n;
    }
    traffic
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.messages_sent += other.messages_sent;
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
