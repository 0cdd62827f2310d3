//! The MPI communicator (cargo feature `mpi`): one data-parallel rank per process,
//! launched by `mpirun`, collectives through rsmpi over the system's MPI (OpenMPI).
//!
//! - `allreduce_f32` and `allreduce_wire(F32)` are `MPI_Allreduce(MPI_SUM)` on f32.
//!   OpenMPI's algorithms (recursive doubling, ring, Rabenseifner) leave every rank
//!   with the same bits, since IEEE addition is commutative and each block is reduced
//!   once; the run's periodic parameter checksum would catch it if one did not.
//! - `allreduce_wire(F16 | Bf16)`: MPI has no half-precision sum, so the ranks
//!   allgather the 2-byte elements and every rank adds them in rank order in f32,
//!   rounding to the wire type after each addition, as a reduction in that type does.
//!   The bytes on the wire stay 2 per element.
//! - `allgather`: the sizes first (`MPI_Allgather` of one `u64` each), then
//!   `MPI_Allgatherv` of the payloads.
//! - `broadcast`: the size, then the data, each an `MPI_Bcast` from the root.
//!
//! # What is counted
//!
//! MPI does not report what its algorithms move, so [`Traffic`] counts, per call, what
//! the bandwidth-optimal algorithm of that collective moves at this rank: the ring
//! allreduce and ring allgather and the binomial broadcast that
//! [`ThreadCluster`](super::ThreadCluster) really runs (formulas:
//! [`ring_allreduce_traffic`], [`ring_allgather_traffic`],
//! [`tree_broadcast_traffic`]). So a trace under `mpirun -np N` and one of N threads
//! report the same bytes for the same exchange.
//!
//! # One thread, and failures that never hang
//!
//! MPI is initialised at [`Threading::Funneled`](mpi::Threading): only the thread that
//! created the [`MpiSession`] may call it, and every collective checks that (an
//! [`CommError::Invalid`] otherwise). Collectives are started non-blocking and waited
//! for by polling, and while rank 0 waits it also looks for a failure notice: a rank
//! that fails calls [`MpiSession::fail`], which sends its message to rank 0 and waits;
//! rank 0 prints it and ends the job with `MPI_Abort` (a pending MPI request cannot be
//! abandoned, and the job is over anyway). A rank that dies outright is seen by
//! `mpirun`, which ends the job and names the rank.

use std::thread::ThreadId;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::request::{LocalScope, Request};
use mpi::topology::SimpleCommunicator;
use mpi::traits::Communicator as _;
use mpi::traits::*;
use mpi::{Count, Tag, Threading};
use regimen_plugin::compress::WireElement;

use super::{
    ring_allgather_traffic, ring_allreduce_traffic, tree_broadcast_traffic, CommError,
    Communicator, Traffic,
};

/// The tag of failure notices (collectives do not use tags).
const FAILURE_TAG: Tag = 7_001;

/// How long a failing rank waits for rank 0 to take its notice and end the job
/// before it ends the job itself.
const NOTICE_GRACE: Duration = Duration::from_secs(10);

/// The exit code of a job ended because a rank failed.
pub const FAILURE_EXIT_CODE: i32 = 3;

/// MPI, initialised for this process; dropping it finalises MPI. Keep it alive as long
/// as any [`MpiCommunicator`] is used.
pub struct MpiSession {
    _universe: Universe,
    owner: ThreadId,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for MpiSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiSession")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl MpiSession {
    /// Initialise MPI on this thread (which becomes the one thread that talks to it).
    /// Fails if MPI was initialised before.
    pub fn init() -> Result<Self, CommError> {
        let (universe, _provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| CommError::Invalid {
                rank: 0,
                message: "MPI is already initialised in this process".into(),
            })?;
        let world = universe.world();
        Ok(Self {
            _universe: universe,
            owner: std::thread::current().id(),
            rank: usize::try_from(world.rank()).unwrap_or(0),
            world: usize::try_from(world.size()).unwrap_or(1),
        })
    }

    /// This process's rank in `MPI_COMM_WORLD`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// A communicator over `MPI_COMM_WORLD` (for the thread that created the session).
    pub fn communicator(&self) -> MpiCommunicator {
        MpiCommunicator {
            rank: self.rank,
            world: self.world,
            owner: self.owner,
            traffic: Traffic::default(),
        }
    }

    /// End the whole job with `code` (`MPI_Abort`).
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    /// This rank failed with `message`: rank 0 prints it and aborts the job; another
    /// rank sends it to rank 0, which prints it and aborts the job when it next waits
    /// for a collective (within [`NOTICE_GRACE`], else this rank prints and aborts).
    pub fn fail(&self, message: &str, code: i32) -> ! {
        let world = SimpleCommunicator::world();
        if self.rank == 0 {
            eprintln!("error: rank 0 failed: {message}");
            eprintln!("regimen: aborting the MPI job");
            world.abort(code);
        }
        let deadline = Instant::now() + NOTICE_GRACE;
        let sent = mpi::request::scope(|scope| {
            let request = world.process_at_rank(0).immediate_send_with_tag(
                scope,
                message.as_bytes(),
                FAILURE_TAG,
            );
            poll(request, Some(deadline), || {})
        });
        if sent {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!("error: rank {} failed: {message}", self.rank);
        eprintln!("regimen: rank 0 did not end the job; aborting it from this rank");
        world.abort(code)
    }
}

/// Wait for `request`, running `between` while it is pending; `false` if `deadline`
/// passed first (the request is then left to `MPI_Abort`, which the caller calls).
fn poll<'a, D: ?Sized>(
    mut request: Request<'a, D, &LocalScope<'a>>,
    deadline: Option<Instant>,
    mut between: impl FnMut(),
) -> bool {
    loop {
        match request.test() {
            Ok(_) => return true,
            Err(pending) => request = pending,
        }
        between();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Leaving the scope with a pending request aborts the process: end the job
            // cleanly instead.
            SimpleCommunicator::world().abort(FAILURE_EXIT_CODE);
        }
        std::thread::yield_now();
    }
}

/// One rank's communicator over `MPI_COMM_WORLD` (see the module doc).
#[derive(Debug)]
pub struct MpiCommunicator {
    rank: usize,
    world: usize,
    owner: ThreadId,
    traffic: Traffic,
}

impl MpiCommunicator {
    fn invalid(&self, message: String) -> CommError {
        CommError::Invalid {
            rank: self.rank,
            message,
        }
    }

    /// Collectives come from the session's thread only (MPI's threading level).
    fn check_thread(&self) -> Result<(), CommError> {
        if std::thread::current().id() == self.owner {
            Ok(())
        } else {
            Err(self.invalid(
                "MPI is called from a thread other than the one that initialised it".into(),
            ))
        }
    }

    fn count(&self, n: usize) -> Result<Count, CommError> {
        Count::try_from(n)
            .map_err(|_| self.invalid(format!("{n} elements exceed MPI's count limit")))
    }

    /// Wait for a collective; on rank 0, take any failure notice meanwhile (and end
    /// the job with it).
    fn wait<'a, D: ?Sized>(&self, request: Request<'a, D, &LocalScope<'a>>) {
        let rank0 = self.rank == 0;
        // No deadline: a peer that dies ends the job through `mpirun`.
        poll(request, None, || {
            if rank0 {
                take_failure_notice();
            }
        });
    }

    fn allreduce_sum(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.count(data.len())?;
        let send = data.to_vec();
        let world = SimpleCommunicator::world();
        mpi::request::scope(|scope| {
            let request =
                world.immediate_all_reduce_into(scope, &send[..], data, SystemOperation::sum());
            self.wait(request);
        });
        self.traffic += ring_allreduce_traffic(data.len() as u64, 4, self.world, self.rank);
        Ok(())
    }

    /// Half-precision sums: allgather, then the rank-order sum rounded at each step.
    fn allreduce_half(&mut self, element: WireElement, data: &mut [u8]) -> Result<(), CommError> {
        let n = data.len();
        self.count(n.saturating_mul(self.world))?;
        let mut gathered = vec![0u8; n * self.world];
        let world = SimpleCommunicator::world();
        mpi::request::scope(|scope| {
            let request = world.immediate_all_gather_into(scope, &data[..], &mut gathered[..]);
            self.wait(request);
        });
        let add = |a: [u8; 2], b: [u8; 2]| -> [u8; 2] {
            match element {
                WireElement::Bf16 => bf16::from_f32(
                    bf16::from_le_bytes(a).to_f32() + bf16::from_le_bytes(b).to_f32(),
                )
                .to_le_bytes(),
                _ => f16::from_f32(f16::from_le_bytes(a).to_f32() + f16::from_le_bytes(b).to_f32())
                    .to_le_bytes(),
            }
        };
        for (i, out) in data.chunks_exact_mut(2).enumerate() {
            let at = |rank: usize| {
                let k = rank * n + 2 * i;
                [gathered[k], gathered[k + 1]]
            };
            let mut sum = at(0);
            for rank in 1..self.world {
                sum = add(sum, at(rank));
            }
            out.copy_from_slice(&sum);
        }
        let peers = self.world as u64 - 1;
        self.traffic += Traffic {
            bytes_sent: peers * n as u64,
            bytes_received: peers * n as u64,
            messages_sent: peers,
        };
        Ok(())
    }
}

/// Rank 0: if a peer sent a failure notice, print it and end the job.
fn take_failure_notice() {
    let world = SimpleCommunicator::world();
    if let Some(matched) = world
        .any_process()
        .immediate_matched_probe_with_tag(FAILURE_TAG)
    {
        let (bytes, status): (Vec<u8>, _) = matched.matched_receive_vec();
        eprintln!(
            "error: rank {} failed: {}",
            status.source_rank(),
            String::from_utf8_lossy(&bytes)
        );
        eprintln!("regimen: aborting the MPI job");
        world.abort(FAILURE_EXIT_CODE);
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn allreduce_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.check_thread()?;
        if self.world < 2 {
            return Ok(());
        }
        self.allreduce_sum(data)
    }

    fn allreduce_wire(&mut self, element: WireElement, data: &mut [u8]) -> Result<(), CommError> {
        self.check_thread()?;
        if data.len() % element.size() != 0 {
            return Err(self.invalid(format!(
                "{} bytes is not a whole number of {} elements",
                data.len(),
                element.name()
            )));
        }
        if self.world < 2 {
            return Ok(());
        }
        match element {
            WireElement::F32 => {
                let mut values: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect();
                self.allreduce_sum(&mut values)?;
                for (out, v) in data.chunks_exact_mut(4).zip(values) {
                    out.copy_from_slice(&v.to_le_bytes());
                }
                Ok(())
            }
            WireElement::F16 | WireElement::Bf16 => self.allreduce_half(element, data),
        }
    }

    fn allgather(&mut self, payload: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CommError> {
        self.check_thread()?;
        let world = SimpleCommunicator::world();
        let size = [payload.len() as u64];
        let mut sizes = vec![0u64; self.world];
        mpi::request::scope(|scope| {
            let request = world.immediate_all_gather_into(scope, &size[..], &mut sizes[..]);
            self.wait(request);
        });
        let counts: Vec<Count> = sizes
            .iter()
            .map(|&s| {
                usize::try_from(s)
                    .map_err(|_| ())
                    .and_then(|s| Count::try_from(s).map_err(|_| ()))
            })
            .collect::<Result<_, _>>()
            .map_err(|()| {
                self.invalid(format!("payload sizes {sizes:?} exceed MPI's count limit"))
            })?;
        let mut displs = Vec::with_capacity(self.world);
        let mut total: Count = 0;
        for &c in &counts {
            displs.push(total);
            total = total.checked_add(c).ok_or_else(|| {
                self.invalid(format!(
                    "payloads of {sizes:?} bytes exceed MPI's count limit"
                ))
            })?;
        }
        let mut buffer = vec![0u8; total as usize];
        {
            let mut partition = PartitionMut::new(&mut buffer[..], &counts[..], &displs[..]);
            mpi::request::scope(|scope| {
                let request =
                    world.immediate_all_gather_varcount_into(scope, payload, &mut partition);
                self.wait(request);
            });
        }
        out.resize_with(self.world, Vec::new);
        for ((slot, &at), &count) in out.iter_mut().zip(&displs).zip(&counts) {
            slot.clear();
            slot.extend_from_slice(&buffer[at as usize..(at + count) as usize]);
        }
        self.traffic += ring_allgather_traffic(&sizes, self.rank);
        Ok(())
    }

    fn broadcast(&mut self, root: usize, data: &mut Vec<u8>) -> Result<(), CommError> {
        self.check_thread()?;
        if root >= self.world {
            return Err(self.invalid(format!(
                "broadcast root {root} outside a world of {}",
                self.world
            )));
        }
        if self.world < 2 {
            return Ok(());
        }
        let world = SimpleCommunicator::world();
        let root_process = world.process_at_rank(root as mpi::Rank);
        let mut size = [data.len() as u64];
        mpi::request::scope(|scope| {
            let request = root_process.immediate_broadcast_into(scope, &mut size[..]);
            self.wait(request);
        });
        let n = usize::try_from(size[0])
            .map_err(|_| self.invalid(format!("rank {root} announced {} bytes", size[0])))?;
        self.count(n)?;
        data.resize(n, 0);
        mpi::request::scope(|scope| {
            let request = root_process.immediate_broadcast_into(scope, &mut data[..]);
            self.wait(request);
        });
        self.traffic += tree_broadcast_traffic(n as u64, self.world, root, self.rank);
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }
}
