//! Run under `mpirun -n N`: trains the data-parallel test case (a recurrent LIF + ALIF
//! network with a sparse projection) in every configuration of
//! `plasticity_tests::data_parallel::cases` on the job's ranks, and on rank 0 also alone in
//! one process, and checks that every rank's final weights and statistics equal the
//! single-process run's bit for bit. Exits with status 1 on any difference.
//!
//! cargo build --release -p plasticity-tests --features mpi --example mpi_equality
//! mpirun -n 4 --oversubscribe target/release/examples/mpi_equality

use std::process::ExitCode;
use std::sync::Arc;

use plasticity_runtime::collective::Mpi;
use plasticity_runtime::{Collective, Single};
use plasticity_tests::data_parallel::{cases, train};

fn main() -> ExitCode {
    let comm: Arc<dyn Collective> = match Mpi::init() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (rank, size) = (comm.rank(), comm.size());
    let mut failed = 0u8;
    for (name, config) in cases() {
        for f64_run in [true, false] {
            let (job, alone) = if f64_run {
                (
                    train::<f64>(&config, comm.clone()),
                    train::<f64>(&config, Arc::new(Single)),
                )
            } else {
                (
                    train::<f32>(&config, comm.clone()),
                    train::<f32>(&config, Arc::new(Single)),
                )
            };
            let same = job == alone;
            // Every rank checks its own copy; rank 0 reports.
            let mut verdict = [u8::from(!same)];
            for r in 1..size {
                if rank == 0 {
                    let mut theirs = [0u8];
                    comm.receive(r, &mut theirs).expect("a verdict");
                    verdict[0] |= theirs[0];
                } else if rank == r {
                    comm.send(0, &verdict).expect("a verdict");
                }
            }
            if rank == 0 {
                let kind = if f64_run { "f64" } else { "f32" };
                let status = if verdict[0] == 0 { "bit-identical" } else { "DIFFERENT" };
                println!("{name}, {kind}: {size} ranks vs 1 process: {status}");
                failed |= verdict[0];
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
