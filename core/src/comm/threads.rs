//! The in-process multi-worker communicator: W simulated data-parallel workers in one
//! process, one thread per rank, talking over `std::sync::mpsc` channels (one channel
//! per ordered pair of ranks). Tests and benchmarks use it to run real collectives —
//! real bytes through real channels, counted as they leave and enter a rank — without
//! MPI.
//!
//! # Algorithms (what NCCL and MPI use for large messages)
//!
//! - **Allreduce** (`allreduce_f32`, `allreduce_wire`): a ring. The `n` elements are cut
//!   into W blocks, block `c` being elements `[⌊c·n/W⌋, ⌊(c+1)·n/W⌋)` (some blocks are
//!   empty when `n < W`). Ring neighbours: rank `r` sends to `r+1` and receives from
//!   `r−1` (mod W).
//!   1. *Reduce-scatter*, W−1 steps: at step `k` rank `r` sends block `r−k` and adds the
//!      block `r−k−1` it receives into its own copy. Block `c` is therefore summed in
//!      the order `((x_c + x_{c+1}) + x_{c+2}) + … + x_{c+W−1}` (ranks mod W) and ends
//!      fully reduced at rank `c−1`.
//!   2. *Allgather*, W−1 steps: at step `k` rank `r` sends block `r+1−k` and overwrites
//!      block `r−k` with what it receives.
//!
//!   Every rank ends with the bits computed by one rank, so all ranks agree exactly. For
//!   `f16`/`bf16` wire data every hop adds in f32 and rounds (to nearest, ties to even)
//!   back to the wire type, as a reduction in that type does; since f32 has more than
//!   twice the precision of either, each hop is the correctly rounded sum of its two
//!   operands.
//!
//!   Per rank, with `|B_c|` the bytes of block `c` and `N` the bytes of the whole buffer:
//!   bytes sent `= 2N − |B_{r+1}| − |B_{r+2}|` (the reduce-scatter sends every block but
//!   `r+1`, the allgather every block but `r+2`), bytes received `= 2N − |B_r| −
//!   |B_{r+1}|`, messages sent `= 2(W−1)`. When W divides `n` that is `2(W−1)/W · N`
//!   each way, and summed over the ranks always `2(W−1) · N`.
//! - **Allgather** of variable-length payloads (MPI's `Allgatherv`): first a ring
//!   allgather of the sizes (one 8-byte little-endian `u64` per message), then a ring
//!   allgather of the payloads, each receiver checking the announced size: W−1 steps
//!   each, rank `r` sending block `r−k` at step `k`. Per rank: bytes sent `= 8(W−1) +
//!   Σ_{j≠r+1} |p_j|`, received `= 8(W−1) + Σ_{j≠r} |p_j|`, messages `2(W−1)`.
//! - **Broadcast**: a binomial tree from the root (ranks relative to the root: at the
//!   round of distance `m = 1, 2, 4, …` every relative rank `v < m` that holds the data
//!   sends it to `v + m`). Each edge carries the size (8 bytes) then the data, so each
//!   non-root rank receives `8 + n` bytes.
//!
//! # What is counted
//!
//! [`Traffic`] counts the bytes of every message's data — gradients, payloads, and the
//! sizes exchanged before variable-length data — as it is handed to a channel
//! (sent) and taken from one (received). Each message also carries a small envelope
//! (which collective, its sequence number, the caller's length, the step and block),
//! the analogue of an MPI envelope (tag, count): it is how mismatched calls are
//! detected and, like MPI's, it is not counted as data.
//!
//! # Failures never hang
//!
//! Every receive waits at most the cluster's timeout
//! ([`ThreadCluster::DEFAULT_TIMEOUT`], 300 s, or [`ThreadCluster::with_timeout`]); a
//! [`CommError::Timeout`] reports it in whole seconds, rounded up. A peer whose
//! communicator was dropped is [`CommError::PeerGone`]; a message from a different
//! collective, sequence number or length is [`CommError::Mismatch`]. After any error
//! a communicator closes its channels, so its peers see it as gone instead of
//! waiting, and every later call returns the same error.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use half::{bf16, f16};
use regimen_plugin::compress::WireElement;

use super::{CommError, Communicator, Traffic};

/// Bytes of a size message (a little-endian `u64`).
const SIZE_BYTES: usize = 8;

/// Builds the communicators of an in-process cluster.
#[derive(Clone, Copy, Debug)]
pub struct ThreadCluster;

impl ThreadCluster {
    /// How long a rank waits for a peer's message by default: generous, so that a
    /// slow peer on a loaded machine (or a debugger) is not mistaken for a dead one.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    /// One communicator per simulated worker, in rank order, waiting at most
    /// [`ThreadCluster::DEFAULT_TIMEOUT`] for any message. Move each to its own
    /// thread. A world of 0 gives no communicators.
    // A cluster exists only as its ranks' communicators, each owned by its own thread;
    // there is no cluster object to return.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize) -> Vec<ThreadCommunicator> {
        Self::with_timeout(world, Self::DEFAULT_TIMEOUT)
    }

    /// As [`ThreadCluster::new`], waiting at most `timeout` for any message.
    pub fn with_timeout(world: usize, timeout: Duration) -> Vec<ThreadCommunicator> {
        let mut outgoing: Vec<Vec<Option<Sender<Message>>>> = (0..world)
            .map(|_| (0..world).map(|_| None).collect())
            .collect();
        let mut incoming: Vec<Vec<Option<Receiver<Message>>>> = (0..world)
            .map(|_| (0..world).map(|_| None).collect())
            .collect();
        for (from, senders) in outgoing.iter_mut().enumerate() {
            for (to, sender) in senders.iter_mut().enumerate() {
                if from != to {
                    let (tx, rx) = mpsc::channel();
                    *sender = Some(tx);
                    if let Some(slot) = incoming.get_mut(to).and_then(|row| row.get_mut(from)) {
                        *slot = Some(rx);
                    }
                }
            }
        }
        outgoing
            .into_iter()
            .zip(incoming)
            .enumerate()
            .map(|(rank, (to, from))| ThreadCommunicator {
                rank,
                world,
                timeout,
                links: Some(Links { to, from }),
                sequence: 0,
                traffic: Traffic::default(),
                failure: None,
            })
            .collect()
    }
}

/// One rank of a [`ThreadCluster`]: owned by one thread (it is `Send`, not `Sync`).
#[derive(Debug)]
pub struct ThreadCommunicator {
    rank: usize,
    world: usize,
    timeout: Duration,
    /// `None` once the communicator failed: dropping the channels is what tells the
    /// peers.
    links: Option<Links>,
    /// Collectives started so far; every message carries it.
    sequence: u64,
    traffic: Traffic,
    failure: Option<CommError>,
}

/// A rank's channel ends, indexed by peer rank (`None` at its own rank).
#[derive(Debug)]
struct Links {
    to: Vec<Option<Sender<Message>>>,
    from: Vec<Option<Receiver<Message>>>,
}

/// Which collective a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collective {
    AllreduceF32,
    AllreduceWire(WireElement),
    AllgatherSizes,
    AllgatherData,
    BroadcastSize { root: usize },
    BroadcastData { root: usize },
}

impl Collective {
    fn describe(self) -> String {
        match self {
            Collective::AllreduceF32 => "allreduce_f32".to_owned(),
            Collective::AllreduceWire(element) => format!("allreduce_wire({})", element.name()),
            Collective::AllgatherSizes => "allgather (sizes)".to_owned(),
            Collective::AllgatherData => "allgather (data)".to_owned(),
            Collective::BroadcastSize { root } => format!("broadcast from {root} (size)"),
            Collective::BroadcastData { root } => format!("broadcast from {root} (data)"),
        }
    }
}

/// What a message says about itself (not counted as traffic; see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Envelope {
    collective: Collective,
    /// The sender's collective count.
    sequence: u64,
    /// The sender's length for the collective: elements for an allreduce, the block's
    /// bytes for allgather data, the world for sizes, 0 for a broadcast's size.
    length: u64,
    /// Message index within the collective.
    step: usize,
    /// Which block of the buffer the data is.
    block: usize,
}

#[derive(Debug)]
struct Message {
    envelope: Envelope,
    data: Vec<u8>,
}

impl ThreadCommunicator {
    /// The longest a receive waits for a peer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn previous(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Start a collective: refuse if a previous one failed.
    fn begin(&mut self) -> Result<(), CommError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.sequence += 1;
        Ok(())
    }

    /// End a collective; on failure close every channel so the peers notice.
    fn finish<T>(&mut self, result: Result<T, CommError>) -> Result<T, CommError> {
        if let Err(error) = &result {
            self.links = None;
            self.failure = Some(error.clone());
        }
        result
    }

    fn invalid(&self, message: String) -> CommError {
        CommError::Invalid {
            rank: self.rank,
            message,
        }
    }

    fn envelope(&self, collective: Collective, length: u64, step: usize, block: usize) -> Envelope {
        Envelope {
            collective,
            sequence: self.sequence,
            length,
            step,
            block,
        }
    }

    fn send(&mut self, peer: usize, envelope: Envelope, data: Vec<u8>) -> Result<(), CommError> {
        let gone = CommError::PeerGone {
            rank: self.rank,
            peer,
        };
        let sender = self
            .links
            .as_ref()
            .and_then(|links| links.to.get(peer))
            .and_then(Option::as_ref)
            .ok_or_else(|| gone.clone())?;
        let bytes = data.len() as u64;
        sender.send(Message { envelope, data }).map_err(|_| gone)?;
        self.traffic.bytes_sent += bytes;
        self.traffic.messages_sent += 1;
        Ok(())
    }

    /// The next message from `peer`, which must carry `expected` and `bytes` bytes.
    fn receive(
        &mut self,
        peer: usize,
        expected: Envelope,
        bytes: usize,
    ) -> Result<Vec<u8>, CommError> {
        let receiver = self
            .links
            .as_ref()
            .and_then(|links| links.from.get(peer))
            .and_then(Option::as_ref)
            .ok_or(CommError::PeerGone {
                rank: self.rank,
                peer,
            })?;
        let message = receiver
            .recv_timeout(self.timeout)
            .map_err(|error| match error {
                RecvTimeoutError::Timeout => CommError::Timeout {
                    rank: self.rank,
                    peer,
                    seconds: whole_seconds_up(self.timeout),
                },
                RecvTimeoutError::Disconnected => CommError::PeerGone {
                    rank: self.rank,
                    peer,
                },
            })?;
        self.traffic.bytes_received += message.data.len() as u64;
        if message.envelope != expected {
            return Err(self.mismatch(peer, &message.envelope, &expected));
        }
        if message.data.len() != bytes {
            return Err(CommError::Mismatch {
                rank: self.rank,
                message: format!(
                    "rank {peer} sent {} bytes in {}, {bytes} expected",
                    message.data.len(),
                    expected.collective.describe()
                ),
            });
        }
        Ok(message.data)
    }

    fn mismatch(&self, peer: usize, found: &Envelope, expected: &Envelope) -> CommError {
        let message = if found.collective != expected.collective {
            format!(
                "rank {peer} called {} (collective #{}) while this rank called {} (collective #{})",
                found.collective.describe(),
                found.sequence,
                expected.collective.describe(),
                expected.sequence
            )
        } else if found.sequence != expected.sequence {
            format!(
                "rank {peer} is at collective #{}, this rank at #{} ({})",
                found.sequence,
                expected.sequence,
                expected.collective.describe()
            )
        } else if found.length != expected.length {
            format!(
                "rank {peer} called {} with length {}, this rank with length {}",
                found.collective.describe(),
                found.length,
                expected.length
            )
        } else {
            format!(
                "rank {peer} sent step {} block {} of {}, step {} block {} expected",
                found.step,
                found.block,
                found.collective.describe(),
                expected.step,
                expected.block
            )
        };
        CommError::Mismatch {
            rank: self.rank,
            message,
        }
    }

    /// The ring allreduce of the module doc over `buffer`.
    fn ring_allreduce(
        &mut self,
        collective: Collective,
        buffer: &mut dyn RingBuffer,
    ) -> Result<(), CommError> {
        let world = self.world;
        if world <= 1 {
            return Ok(());
        }
        let rank = self.rank;
        let elements = buffer.elements();
        let element_bytes = buffer.element_bytes();
        let (next, previous) = (self.next(), self.previous());
        let length = elements as u64;
        for step in 0..world - 1 {
            let send_block = (rank + world - step) % world;
            let receive_block = (rank + 2 * world - step - 1) % world;
            let mut data = Vec::new();
            buffer.encode(ring_block(elements, world, send_block), &mut data);
            self.send(
                next,
                self.envelope(collective, length, step, send_block),
                data,
            )?;
            let range = ring_block(elements, world, receive_block);
            let expected = self.envelope(collective, length, step, receive_block);
            let data = self.receive(previous, expected, range.len() * element_bytes)?;
            buffer.accumulate(range, &data);
        }
        for step in 0..world - 1 {
            let send_block = (rank + 1 + world - step) % world;
            let receive_block = (rank + world - step) % world;
            let mut data = Vec::new();
            buffer.encode(ring_block(elements, world, send_block), &mut data);
            let message_step = world - 1 + step;
            self.send(
                next,
                self.envelope(collective, length, message_step, send_block),
                data,
            )?;
            let range = ring_block(elements, world, receive_block);
            let expected = self.envelope(collective, length, message_step, receive_block);
            let data = self.receive(previous, expected, range.len() * element_bytes)?;
            buffer.assign(range, &data);
        }
        Ok(())
    }

    fn ring_allgather(&mut self, payload: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CommError> {
        let (rank, world) = (self.rank, self.world);
        out.resize_with(world, Vec::new);
        if let Some(own) = out.get_mut(rank) {
            own.clear();
            own.extend_from_slice(payload);
        }
        if world <= 1 {
            return Ok(());
        }
        let (next, previous) = (self.next(), self.previous());
        let mut sizes = vec![0u64; world];
        sizes[rank] = payload.len() as u64;
        let world_length = world as u64;
        for step in 0..world - 1 {
            let send_block = (rank + world - step) % world;
            let receive_block = (rank + 2 * world - step - 1) % world;
            let size = sizes[send_block].to_le_bytes().to_vec();
            let envelope =
                self.envelope(Collective::AllgatherSizes, world_length, step, send_block);
            self.send(next, envelope, size)?;
            let expected = self.envelope(
                Collective::AllgatherSizes,
                world_length,
                step,
                receive_block,
            );
            let data = self.receive(previous, expected, SIZE_BYTES)?;
            sizes[receive_block] = read_u64(&data);
        }
        for step in 0..world - 1 {
            let send_block = (rank + world - step) % world;
            let receive_block = (rank + 2 * world - step - 1) % world;
            let data = out[send_block].clone();
            let envelope = self.envelope(
                Collective::AllgatherData,
                sizes[send_block],
                step,
                send_block,
            );
            self.send(next, envelope, data)?;
            let announced = sizes[receive_block];
            let bytes = usize::try_from(announced).map_err(|_| {
                self.invalid(format!("rank {receive_block} announced {announced} bytes"))
            })?;
            let expected = self.envelope(Collective::AllgatherData, announced, step, receive_block);
            out[receive_block] = self.receive(previous, expected, bytes)?;
        }
        Ok(())
    }

    fn tree_broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CommError> {
        let world = self.world;
        if root >= world {
            return Err(self.invalid(format!("broadcast root {root} outside a world of {world}")));
        }
        let relative = (self.rank + world - root) % world;
        let size_kind = Collective::BroadcastSize { root };
        let data_kind = Collective::BroadcastData { root };
        let mut distance = 1usize;
        let mut round = 0usize;
        while distance < world {
            if relative < distance {
                let child = relative + distance;
                if child < world {
                    let peer = (child + root) % world;
                    let length = data.len() as u64;
                    let size = length.to_le_bytes().to_vec();
                    self.send(peer, self.envelope(size_kind, 0, 2 * round, child), size)?;
                    let envelope = self.envelope(data_kind, length, 2 * round + 1, child);
                    self.send(peer, envelope, data.clone())?;
                }
            } else if relative < 2 * distance {
                let peer = (relative - distance + root) % world;
                let expected = self.envelope(size_kind, 0, 2 * round, relative);
                let size = read_u64(&self.receive(peer, expected, SIZE_BYTES)?);
                let bytes = usize::try_from(size)
                    .map_err(|_| self.invalid(format!("rank {peer} announced {size} bytes")))?;
                let expected = self.envelope(data_kind, size, 2 * round + 1, relative);
                *data = self.receive(peer, expected, bytes)?;
            }
            distance = distance.saturating_mul(2);
            round += 1;
        }
        Ok(())
    }
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn allreduce_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.begin()?;
        let result = self.ring_allreduce(Collective::AllreduceF32, &mut F32Buffer(data));
        self.finish(result)
    }

    fn allreduce_wire(&mut self, element: WireElement, data: &mut [u8]) -> Result<(), CommError> {
        self.begin()?;
        let result = if data.len() % element.size() != 0 {
            Err(self.invalid(format!(
                "{} bytes is not a whole number of {} elements",
                data.len(),
                element.name()
            )))
        } else {
            self.ring_allreduce(
                Collective::AllreduceWire(element),
                &mut WireBuffer { element, data },
            )
        };
        self.finish(result)
    }

    fn allgather(&mut self, payload: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CommError> {
        self.begin()?;
        let result = self.ring_allgather(payload, out);
        self.finish(result)
    }

    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CommError> {
        self.begin()?;
        let result = self.tree_broadcast(root, data);
        self.finish(result)
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }
}

/// Block `block` of `elements` cut into `world` blocks: `[⌊c·n/W⌋, ⌊(c+1)·n/W⌋)`
/// (in u128, so no product overflows).
fn ring_block(elements: usize, world: usize, block: usize) -> Range<usize> {
    let bound = |c: usize| (c as u128 * elements as u128 / world.max(1) as u128) as usize;
    bound(block)..bound(block + 1)
}

/// Whole seconds of `timeout`, rounded up so a sub-second timeout does not read as 0.
fn whole_seconds_up(timeout: Duration) -> u64 {
    timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)
}

/// A little-endian `u64` from a message already checked to hold 8 bytes.
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; SIZE_BYTES];
    for (w, b) in word.iter_mut().zip(bytes) {
        *w = *b;
    }
    u64::from_le_bytes(word)
}

/// A buffer the ring reduces: encodes blocks to wire bytes and folds received blocks
/// in. Received data has been checked to be exactly the block's bytes.
trait RingBuffer {
    fn elements(&self) -> usize;
    fn element_bytes(&self) -> usize;
    fn encode(&self, range: Range<usize>, out: &mut Vec<u8>);
    fn accumulate(&mut self, range: Range<usize>, data: &[u8]);
    fn assign(&mut self, range: Range<usize>, data: &[u8]);
}

struct F32Buffer<'a>(&'a mut [f32]);

impl RingBuffer for F32Buffer<'_> {
    fn elements(&self) -> usize {
        self.0.len()
    }

    fn element_bytes(&self) -> usize {
        4
    }

    fn encode(&self, range: Range<usize>, out: &mut Vec<u8>) {
        let values = self.0.get(range).unwrap_or_default();
        out.reserve(values.len() * 4);
        for value in values {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn accumulate(&mut self, range: Range<usize>, data: &[u8]) {
        let values = self.0.get_mut(range).unwrap_or_default();
        for (value, bytes) in values.iter_mut().zip(data.chunks_exact(4)) {
            *value += f32::from_le_bytes(word4(bytes));
        }
    }

    fn assign(&mut self, range: Range<usize>, data: &[u8]) {
        let values = self.0.get_mut(range).unwrap_or_default();
        for (value, bytes) in values.iter_mut().zip(data.chunks_exact(4)) {
            *value = f32::from_le_bytes(word4(bytes));
        }
    }
}

struct WireBuffer<'a> {
    element: WireElement,
    data: &'a mut [u8],
}

impl WireBuffer<'_> {
    fn bytes(&self, range: Range<usize>) -> Range<usize> {
        let size = self.element.size();
        range.start * size..range.end * size
    }
}

impl RingBuffer for WireBuffer<'_> {
    fn elements(&self) -> usize {
        self.data.len() / self.element.size()
    }

    fn element_bytes(&self) -> usize {
        self.element.size()
    }

    fn encode(&self, range: Range<usize>, out: &mut Vec<u8>) {
        out.extend_from_slice(self.data.get(self.bytes(range)).unwrap_or_default());
    }

    fn accumulate(&mut self, range: Range<usize>, data: &[u8]) {
        let bytes = self.bytes(range);
        let own = self.data.get_mut(bytes).unwrap_or_default();
        match self.element {
            WireElement::F32 => {
                for (mine, theirs) in own.chunks_exact_mut(4).zip(data.chunks_exact(4)) {
                    let sum = f32::from_le_bytes(word4(mine)) + f32::from_le_bytes(word4(theirs));
                    mine.copy_from_slice(&sum.to_le_bytes());
                }
            }
            WireElement::F16 => {
                for (mine, theirs) in own.chunks_exact_mut(2).zip(data.chunks_exact(2)) {
                    let sum = f16::from_le_bytes(word2(mine)).to_f32()
                        + f16::from_le_bytes(word2(theirs)).to_f32();
                    mine.copy_from_slice(&f16::from_f32(sum).to_le_bytes());
                }
            }
            WireElement::Bf16 => {
                for (mine, theirs) in own.chunks_exact_mut(2).zip(data.chunks_exact(2)) {
                    let sum = bf16::from_le_bytes(word2(mine)).to_f32()
                        + bf16::from_le_bytes(word2(theirs)).to_f32();
                    mine.copy_from_slice(&bf16::from_f32(sum).to_le_bytes());
                }
            }
        }
    }

    fn assign(&mut self, range: Range<usize>, data: &[u8]) {
        let bytes = self.bytes(range);
        let own = self.data.get_mut(bytes).unwrap_or_default();
        for (mine, theirs) in own.iter_mut().zip(data) {
            *mine = *theirs;
        }
    }
}

/// The 4 bytes of a `chunks_exact(4)` item.
fn word4(bytes: &[u8]) -> [u8; 4] {
    let mut word = [0u8; 4];
    for (w, b) in word.iter_mut().zip(bytes) {
        *w = *b;
    }
    word
}

/// The 2 bytes of a `chunks_exact(2)` item.
fn word2(bytes: &[u8]) -> [u8; 2] {
    let mut word = [0u8; 2];
    for (w, b) in word.iter_mut().zip(bytes) {
        *w = *b;
    }
    word
}
