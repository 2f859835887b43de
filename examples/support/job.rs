//! One program, one process or many: every example runs unchanged under
//! `mpirun -n N` when built with the `mpi` feature.
//!
//! Every rank loads the same data, draws the same random numbers and passes the trainer the
//! same global batches; the trainer computes only its own shards and sums the gradients with
//! the others ([`plasticity_runtime::collective`]). Rank 0 alone prints, writes checkpoints,
//! metrics and plots; the other ranks' standard output goes to `/dev/null`.
//!
//! Failures end the whole job, never leave ranks waiting: a step every rank takes (loading
//! the data) is checked on all ranks at once with [`Job::agree`], and rank 0 reports which
//! rank failed and why; any other error ends the job through MPI's abort, with the failing
//! rank's message; a rank killed outright is noticed by `mpirun`, which ends the others.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, anyhow};
use plasticity_runtime::Collective;

static ROOT: AtomicBool = AtomicBool::new(true);
static RANKS: AtomicUsize = AtomicUsize::new(1);

/// Number of ranks in the job (1 outside MPI).
pub fn ranks() -> usize {
    RANKS.load(Ordering::Relaxed)
}

/// Whether this process is rank 0, the one that prints and writes files (always true
/// outside MPI).
pub fn is_root() -> bool {
    ROOT.load(Ordering::Relaxed)
}

/// This process's place in the job.
pub struct Job {
    comm: Arc<dyn Collective>,
}

/// An error every rank learned through [`Job::agree`]; rank 0 reports it.
#[derive(Debug)]
struct Agreed(String);

impl std::fmt::Display for Agreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Agreed {}

impl Job {
    /// Joins the job: MPI's world with the `mpi` feature, otherwise a job of one process
    /// (refused when `mpirun` started several copies of a binary built without MPI, which
    /// would all train alone and write the same files).
    pub fn start() -> Result<Job> {
        #[cfg(feature = "mpi")]
        let comm: Arc<dyn Collective> = Arc::new(plasticity_runtime::collective::Mpi::init()?);
        #[cfg(not(feature = "mpi"))]
        let comm: Arc<dyn Collective> = {
            let ranks = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
                .iter()
                .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok());
            if let Some(n) = ranks.filter(|&n| n > 1) {
                anyhow::bail!(
                    "started as one of {n} MPI ranks, but this binary was built without the `mpi` feature: \
                     build it with `cargo build --release --features mpi --examples`"
                );
            }
            Arc::new(plasticity_runtime::Single)
        };
        let root = comm.rank() == 0;
        ROOT.store(root, Ordering::Relaxed);
        RANKS.store(comm.size(), Ordering::Relaxed);
        if !root {
            silence_stdout()?;
        }
        Ok(Job { comm })
    }

    /// The communicator to give the trainer.
    pub fn comm(&self) -> Arc<dyn Collective> {
        Arc::clone(&self.comm)
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// A step every rank takes: all ranks learn whether any failed, and each returns the
    /// same verdict. When some failed, every rank returns an error naming the first one and
    /// its message (printed by rank 0 only).
    pub fn agree<T>(&self, result: Result<T>) -> Result<T> {
        if self.size() == 1 {
            return result;
        }
        let mine = result.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
        let verdict = if self.rank() == 0 {
            let mut first = (!mine.is_empty()).then(|| format!("rank 0: {mine}"));
            for r in 1..self.size() {
                let message = self.receive_text(r)?;
                if first.is_none() && !message.is_empty() {
                    first = Some(format!("rank {r}: {message}"));
                }
            }
            first.unwrap_or_default()
        } else {
            self.send_text(0, &mine)?;
            String::new()
        };
        let verdict = self.broadcast_text(&verdict)?;
        match (result, verdict.is_empty()) {
            (Ok(v), true) => Ok(v),
            (_, _) => Err(Agreed(verdict).into()),
        }
    }

    fn send_text(&self, to: usize, text: &str) -> Result<()> {
        self.comm.send(to, &(text.len() as u64).to_le_bytes())?;
        if !text.is_empty() {
            self.comm.send(to, text.as_bytes())?;
        }
        Ok(())
    }

    fn receive_text(&self, from: usize) -> Result<String> {
        let mut len = [0u8; 8];
        self.comm.receive(from, &mut len)?;
        let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
        if !bytes.is_empty() {
            self.comm.receive(from, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn broadcast_text(&self, text: &str) -> Result<String> {
        let mut len = (text.len() as u64).to_le_bytes();
        self.comm.broadcast(0, &mut len)?;
        let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
        if self.rank() == 0 {
            bytes.copy_from_slice(text.as_bytes());
        }
        if !bytes.is_empty() {
            self.comm.broadcast(0, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Runs an example's body as one rank of the job and turns its error into the exit status:
/// alone, the error is printed as `main` would; in a job, an error every rank agreed on is
/// printed by rank 0 and the ranks end normally, and any other error is printed (by rank 0,
/// or after a moment by the failing rank when rank 0 is not failing too) and ends every
/// rank through MPI's abort.
pub fn run(body: impl FnOnce(&Job) -> Result<()>) -> ExitCode {
    let job = match Job::start() {
        Ok(job) => job,
        Err(e) => {
            eprintln!("Error: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    let Err(error) = body(&job) else {
        return ExitCode::SUCCESS;
    };
    if job.size() == 1 {
        eprintln!("Error: {error:?}");
        return ExitCode::FAILURE;
    }
    if error.downcast_ref::<Agreed>().is_some() {
        if job.rank() == 0 {
            eprintln!("Error: {error}");
        }
        return ExitCode::FAILURE;
    }
    if job.rank() != 0 {
        // An error rank 0 shares (a diverged update) is reported by rank 0, whose abort ends
        // this rank during the wait; an error of this rank alone is reported after it.
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    eprintln!("Error on rank {} of {}: {error:?}", job.rank(), job.size());
    job.comm.abort(1)
}

/// Points this process's standard output at `/dev/null`.
fn silence_stdout() -> Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 on two valid descriptors; `null` stays open until after the call.
    if unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
        return Err(anyhow!(
            "redirecting standard output: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
