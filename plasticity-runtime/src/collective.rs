//! Data-parallel training: the communication a [`crate::Trainer`] needs between processes,
//! and the fixed order in which it sums their gradients.
//!
//! e-prop's and BPTT's gradients are sums over samples, so data parallelism is exact: the
//! global batch is cut into [`TrainConfig::shards`](crate::TrainConfig::shards) fixed
//! pieces, every rank computes the gradients of the shards it owns, the shards' gradients
//! are summed, and every rank applies the same update. The sum follows one binary tree over
//! the shards, whichever rank computed which shard, so the result depends on the shard count
//! and never on the number of ranks or threads: the same run on 1, 2 or 4 ranks gives
//! bit-identical weights.
//!
//! The trainer talks to a [`Collective`]: [`Single`] (one process, the default),
//! [`Threads`] (several ranks as threads of one process, for tests) and, with the cargo
//! feature `mpi`, `Mpi` (processes started by `mpirun`, over the system's MPI library).

use std::ops::Range;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

use crate::error::{Error, Result};

/// Point-to-point messages and a broadcast between the ranks of one job: all a trainer needs
/// to sum gradients in a fixed order. Every rank calls the same operations in the same order;
/// message lengths are known to both sides.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks in the job.
    fn size(&self) -> usize;
    /// Sends `bytes` to rank `to` (blocking until they can be reused).
    fn send(&self, to: usize, bytes: &[u8]) -> Result<()>;
    /// Receives exactly `bytes.len()` bytes from rank `from`.
    fn receive(&self, from: usize, bytes: &mut [u8]) -> Result<()>;
    /// Copies `bytes` of rank `root` into `bytes` of every other rank.
    fn broadcast(&self, root: usize, bytes: &mut [u8]) -> Result<()>;
    /// Ends the whole job at once, every rank, with exit status `code`: what a rank that
    /// failed on its own (a file only it could not read) calls so that the others do not
    /// wait for it forever.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One process alone: rank 0 of 1. Nothing is ever sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn send(&self, to: usize, _: &[u8]) -> Result<()> {
        Err(Error::Collective(format!("send to rank {to} in a job of one rank")))
    }
    fn receive(&self, from: usize, _: &mut [u8]) -> Result<()> {
        Err(Error::Collective(format!(
            "receive from rank {from} in a job of one rank"
        )))
    }
    fn broadcast(&self, _: usize, _: &mut [u8]) -> Result<()> {
        Ok(())
    }
}

/// Several ranks as threads of one process, connected by channels: the same protocol as
/// MPI, for tests and for trying a data-parallel setup without `mpirun`.
/// [`Threads::group`] makes the ranks; give each to one thread.
pub struct Threads {
    rank: usize,
    to: Vec<Sender<Vec<u8>>>,
    from: Vec<Mutex<Receiver<Vec<u8>>>>,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads {{ rank: {}, size: {} }}", self.rank, self.to.len())
    }
}

impl Threads {
    /// The `size` ranks of one in-process job, in rank order.
    pub fn group(size: usize) -> Vec<Threads> {
        // channels[a][b] carries messages from rank a to rank b.
        let mut senders: Vec<Vec<Option<Sender<Vec<u8>>>>> = (0..size).map(|_| vec![None; size]).collect();
        let mut receivers: Vec<Vec<Option<Receiver<Vec<u8>>>>> =
            (0..size).map(|_| (0..size).map(|_| None).collect()).collect();
        for a in 0..size {
            for b in 0..size {
                let (tx, rx) = channel();
                senders[a][b] = Some(tx);
                receivers[b][a] = Some(rx);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (to, from))| Threads {
                rank,
                to: to.into_iter().map(|s| s.expect("made above")).collect(),
                from: from.into_iter().map(|r| Mutex::new(r.expect("made above"))).collect(),
            })
            .collect()
    }

    fn peer(&self, rank: usize) -> Result<()> {
        if rank < self.to.len() && rank != self.rank {
            Ok(())
        } else {
            Err(Error::Collective(format!(
                "rank {} addressed rank {rank} in a job of {} ranks",
                self.rank,
                self.to.len()
            )))
        }
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.to.len()
    }
    fn send(&self, to: usize, bytes: &[u8]) -> Result<()> {
        self.peer(to)?;
        self.to[to]
            .send(bytes.to_vec())
            .map_err(|_| Error::Collective(format!("rank {to} has left the job")))
    }
    fn receive(&self, from: usize, bytes: &mut [u8]) -> Result<()> {
        self.peer(from)?;
        let message = self.from[from]
            .lock()
            .map_err(|_| Error::Collective(format!("the channel from rank {from} is poisoned")))?
            .recv()
            .map_err(|_| Error::Collective(format!("rank {from} has left the job")))?;
        if message.len() != bytes.len() {
            return Err(Error::Collective(format!(
                "rank {from} sent {} bytes, rank {} expected {}",
                message.len(),
                self.rank,
                bytes.len()
            )));
        }
        bytes.copy_from_slice(&message);
        Ok(())
    }
    fn broadcast(&self, root: usize, bytes: &mut [u8]) -> Result<()> {
        if self.rank == root {
            for to in (0..self.size()).filter(|&r| r != root) {
                self.send(to, bytes)?;
            }
            Ok(())
        } else {
            self.receive(root, bytes)
        }
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_impl::Mpi;

#[cfg(feature = "mpi")]
mod mpi_impl {
    use std::sync::Mutex;

    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, Destination, Root, Source};

    use super::Collective;
    use crate::error::{Error, Result};

    /// Largest message MPI takes in one call (its counts are `int`).
    const PIECE: usize = 1 << 30;

    /// The ranks started by `mpirun` (MPI's world communicator), over the system's MPI
    /// library. Calls are serialised through a lock, so the handle may be shared between
    /// threads.
    pub struct Mpi {
        // The communicator is dropped before the universe, whose drop finalises MPI.
        world: Mutex<SimpleCommunicator>,
        _universe: Universe,
        rank: usize,
        size: usize,
    }

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank, self.size)
        }
    }

    // SAFETY: MPI is initialised with `Threading::Serialized`, which allows calls from any
    // thread as long as no two run at once; every call goes through the `world` lock. The
    // universe is only touched by its drop.
    unsafe impl Send for Mpi {}
    // SAFETY: as above.
    unsafe impl Sync for Mpi {}

    impl Mpi {
        /// Initialises MPI (once per process). A program started without `mpirun` is a job
        /// of one rank.
        pub fn init() -> Result<Mpi> {
            let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                .ok_or_else(|| Error::Collective("MPI is already initialised in this process".into()))?;
            if level < mpi::Threading::Serialized {
                return Err(Error::Collective(format!(
                    "the MPI library offers thread support {level:?}, expected at least Serialized"
                )));
            }
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            Ok(Mpi {
                world: Mutex::new(world),
                _universe: universe,
                rank,
                size,
            })
        }

        fn world(&self) -> Result<std::sync::MutexGuard<'_, SimpleCommunicator>> {
            self.world
                .lock()
                .map_err(|_| Error::Collective("the MPI handle is poisoned".into()))
        }

        fn peer(&self, rank: usize) -> Result<i32> {
            if rank < self.size && rank != self.rank {
                Ok(rank as i32)
            } else {
                Err(Error::Collective(format!(
                    "rank {} addressed rank {rank} in a job of {} ranks",
                    self.rank, self.size
                )))
            }
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn send(&self, to: usize, bytes: &[u8]) -> Result<()> {
            let to = self.peer(to)?;
            let world = self.world()?;
            for piece in bytes.chunks(PIECE) {
                world.process_at_rank(to).send(piece);
            }
            Ok(())
        }
        fn receive(&self, from: usize, bytes: &mut [u8]) -> Result<()> {
            let from = self.peer(from)?;
            let world = self.world()?;
            for piece in bytes.chunks_mut(PIECE) {
                let status = world.process_at_rank(from).receive_into(piece);
                let count = status.count(u8::equivalent_datatype()) as usize;
                if count != piece.len() {
                    return Err(Error::Collective(format!(
                        "rank {from} sent {count} bytes, rank {} expected {}",
                        self.rank,
                        piece.len()
                    )));
                }
            }
            Ok(())
        }
        fn broadcast(&self, root: usize, bytes: &mut [u8]) -> Result<()> {
            if root >= self.size {
                return Err(Error::Collective(format!(
                    "broadcast from rank {root} in a job of {} ranks",
                    self.size
                )));
            }
            let world = self.world()?;
            for piece in bytes.chunks_mut(PIECE) {
                world.process_at_rank(root as i32).broadcast_into(piece);
            }
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            match self.world.lock() {
                Ok(world) => world.abort(code),
                Err(poisoned) => poisoned.into_inner().abort(code),
            }
        }
    }

    use mpi::datatype::Equivalence;
}

/// How one global batch is cut into shards and which rank computes which: shard `k` holds
/// samples `[⌊k·B/S⌋, ⌊(k+1)·B/S⌋)` and rank `r` owns shards `[⌈r·S/n⌉, ⌈(r+1)·S/n⌉)`, with
/// `S = min(shards, B)` so that no shard is empty. Shard sizes differ by at
/// most one sample; with more ranks than shards, some ranks own none and only receive the
/// result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    batch: usize,
    shards: usize,
    ranks: usize,
}

impl Sharding {
    /// The layout of a global batch of `batch` samples, `shards` requested shards and
    /// `ranks` ranks.
    pub fn new(batch: usize, shards: usize, ranks: usize) -> Self {
        Sharding {
            batch,
            shards: shards.min(batch).max(1),
            ranks: ranks.max(1),
        }
    }

    /// Number of (non-empty) shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Levels of the summation tree below its root, `⌈log₂ S⌉`: the gradient-sized
    /// scratch values the sum needs.
    pub fn depth(&self) -> usize {
        (usize::BITS - (self.shards - 1).leading_zeros()) as usize
    }

    /// The samples of shard `k`.
    pub fn samples(&self, k: usize) -> Range<usize> {
        k * self.batch / self.shards..(k + 1) * self.batch / self.shards
    }

    /// The shards of rank `r`.
    pub fn owned(&self, r: usize) -> Range<usize> {
        (r * self.shards).div_ceil(self.ranks)..((r + 1) * self.shards).div_ceil(self.ranks)
    }

    /// The rank that computes shard `k`.
    pub fn owner(&self, k: usize) -> usize {
        // The last rank whose range starts at or before k.
        (0..self.ranks).rev().find(|&r| self.owned(r).start <= k).unwrap_or(0)
    }

    /// The samples of every shard of rank `r`, one range.
    pub fn samples_of(&self, r: usize) -> Range<usize> {
        let owned = self.owned(r);
        if owned.is_empty() {
            return 0..0;
        }
        self.samples(owned.start).start..self.samples(owned.end - 1).end
    }
}

/// A value summed over shards: partial gradients with their loss and counts, or statistics
/// alone.
pub(crate) trait Summable {
    /// `self += other`.
    fn add(&mut self, other: &Self);
    /// Bytes of [`Summable::encode`].
    fn encoded_len(&self) -> usize;
    /// Writes the value into `out` (`encoded_len` bytes).
    fn encode(&self, out: &mut [u8]);
    /// Reads a value written by `encode` of a value of the same shape.
    fn decode(&mut self, bytes: &[u8]);
}

/// Sums the shards' values in the one fixed order: a binary tree over the shards,
/// `sum(lo, hi) = sum(lo, mid) + sum(mid, hi)` with `mid = lo + (hi − lo) / 2`, whichever
/// rank computes which shard. `leaf(k, v)` writes shard `k`'s value into `v` (called for this
/// rank's shards, in shard order). A node whose halves are on two ranks is added by the rank
/// holding its left half, which receives the right half; the root ends on rank 0 (the owner
/// of shard 0) and is broadcast. Every rank ends with the sum in `out`. `scratch` holds one value per tree level
/// below the root (grown as needed) and `buf` the messages; with one rank nothing is sent
/// and nothing is allocated once they have grown.
pub(crate) fn sum_shards<V: Summable + Clone>(
    comm: &dyn Collective,
    layout: &Sharding,
    out: &mut V,
    scratch: &mut Vec<V>,
    buf: &mut Vec<u8>,
    leaf: &mut dyn FnMut(usize, &mut V) -> Result<()>,
) -> Result<()> {
    while scratch.len() < layout.depth() {
        scratch.push(out.clone());
    }
    let mut tree = Tree {
        comm,
        layout,
        me: comm.rank(),
        buf,
        leaf,
    };
    tree.node(0, layout.shards(), out, &mut scratch[..])?;
    if comm.size() > 1 {
        let root = layout.owner(0);
        let len = out.encoded_len();
        tree.buf.resize(len, 0);
        if tree.me == root {
            out.encode(tree.buf);
        }
        comm.broadcast(root, tree.buf)?;
        if tree.me != root {
            out.decode(tree.buf);
        }
    }
    Ok(())
}

struct Tree<'a, V> {
    comm: &'a dyn Collective,
    layout: &'a Sharding,
    me: usize,
    buf: &'a mut Vec<u8>,
    leaf: &'a mut dyn FnMut(usize, &mut V) -> Result<()>,
}

impl<V: Summable> Tree<'_, V> {
    /// Evaluates node `[lo, hi)` as far as this rank takes part; the node's value ends in
    /// `out` on the rank owning shard `lo`.
    fn node(&mut self, lo: usize, hi: usize, out: &mut V, scratch: &mut [V]) -> Result<()> {
        let (first, last) = (self.layout.owner(lo), self.layout.owner(hi - 1));
        if self.me < first || self.me > last {
            return Ok(());
        }
        if hi - lo == 1 {
            return (self.leaf)(lo, out);
        }
        let mid = lo + (hi - lo) / 2;
        let (right, deeper) = scratch.split_first_mut().expect("one scratch value per level");
        self.node(lo, mid, out, deeper)?;
        self.node(mid, hi, right, deeper)?;
        let (holder_left, holder_right) = (first, self.layout.owner(mid));
        match (holder_left == self.me, holder_right == self.me) {
            (true, true) => out.add(right),
            (true, false) => {
                self.buf.resize(right.encoded_len(), 0);
                self.comm.receive(holder_right, self.buf)?;
                right.decode(self.buf);
                out.add(right);
            }
            (false, true) => {
                self.buf.resize(right.encoded_len(), 0);
                right.encode(self.buf);
                self.comm.send(holder_left, self.buf)?;
            }
            (false, false) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that records the order of its additions: sums of shard indices as strings.
    #[derive(Clone, Debug, PartialEq)]
    struct Expr(String);

    impl Summable for Expr {
        fn add(&mut self, other: &Self) {
            self.0 = format!("({}+{})", self.0, other.0);
        }
        fn encoded_len(&self) -> usize {
            64
        }
        fn encode(&self, out: &mut [u8]) {
            out.fill(b' ');
            out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        }
        fn decode(&mut self, bytes: &[u8]) {
            self.0 = String::from_utf8_lossy(bytes).trim_end().to_string();
        }
    }

    fn sum_on(ranks: usize, shards: usize, batch: usize) -> Vec<String> {
        let group = Threads::group(ranks);
        std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|comm| {
                    s.spawn(move || {
                        let layout = Sharding::new(batch, shards, ranks);
                        let mut out = Expr(String::new());
                        let (mut scratch, mut buf) = (Vec::new(), Vec::new());
                        sum_shards(comm, &layout, &mut out, &mut scratch, &mut buf, &mut |k, v| {
                            assert_eq!(layout.owner(k), comm.rank(), "leaf {k} on the wrong rank");
                            v.0 = k.to_string();
                            Ok(())
                        })
                        .unwrap();
                        out.0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn the_order_of_the_sum_does_not_depend_on_the_rank_count() {
        for shards in [1, 2, 3, 4, 5, 7, 8] {
            let alone = sum_on(1, shards, 16);
            for ranks in [2, 3, 4, 6, 9] {
                let all = sum_on(ranks, shards, 16);
                assert!(
                    all.iter().all(|s| *s == alone[0]),
                    "{shards} shards on {ranks} ranks: {all:?}"
                );
            }
        }
        assert_eq!(sum_on(1, 4, 16)[0], "((0+1)+(2+3))");
        assert_eq!(sum_on(3, 5, 16)[0], "((0+1)+(2+(3+4)))");
    }

    #[test]
    fn shards_cover_the_batch_and_ranks_cover_the_shards() {
        for batch in 1..20 {
            for shards in 1..10 {
                for ranks in 1..7 {
                    let l = Sharding::new(batch, shards, ranks);
                    assert!(l.shards() <= batch);
                    let samples: Vec<usize> = (0..l.shards()).flat_map(|k| l.samples(k)).collect();
                    assert_eq!(samples, (0..batch).collect::<Vec<_>>());
                    assert!((0..l.shards()).all(|k| !l.samples(k).is_empty()));
                    let owned: Vec<usize> = (0..ranks).flat_map(|r| l.owned(r)).collect();
                    assert_eq!(owned, (0..l.shards()).collect::<Vec<_>>());
                    for r in 0..ranks {
                        assert!(l.owned(r).all(|k| l.owner(k) == r));
                    }
                }
            }
        }
    }
}
