//! The examples as MPI jobs (feature `mpi`, `mpirun` on the path): every training example
//! gives bit-identical weights and metrics on 1, 2 and 4 ranks with the same `--shards`; a
//! run resumes on another rank count; only rank 0 prints; a rank that fails alone or is
//! killed ends the job with a clear message instead of leaving the others waiting.
//!
//! `cargo test -p plasticity-examples --features mpi --test mpi` (after the examples are
//! built with the feature, which `cargo test -p plasticity-examples --features mpi` does).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_run, binary, bundled_data, scratch, wait};

/// `mpirun -n ranks` (or the binary alone for 0 ranks) of example `name` with `args`; one
/// worker thread per rank so that four ranks share two cores without thrashing.
fn launch(ranks: usize, name: &str, args: &[String]) -> Command {
    let mut cmd = if ranks == 0 {
        Command::new(binary(name))
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-n", &ranks.to_string()])
            .arg(binary(name));
        c
    };
    cmd.args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RUST_BACKTRACE");
    cmd
}

fn run(ranks: usize, name: &str, args: &[String]) -> Output {
    let out = launch(ranks, name, args).output().expect("start mpirun");
    assert!(
        out.status.success(),
        "{name} on {ranks} ranks {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

/// Each training example with quick flags and `--shards 4`.
fn jobs() -> Vec<(&'static str, Vec<String>)> {
    let sd = [
        "--epochs",
        "2",
        "--hidden",
        "12",
        "--limit",
        "40",
        "--steps",
        "30",
        "--loss-steps",
        "20",
        "--batch",
        "10",
        "--shards",
        "4",
    ];
    let mut with_data = strings(&sd);
    with_data.extend(["--data".into(), bundled_data()]);
    vec![
        ("spoken_digits", with_data.clone()),
        ("spoken_digits", [with_data, strings(&["--algorithm", "bptt"])].concat()),
        (
            "evidence_accumulation",
            strings(&[
                "--batches",
                "6",
                "--batch",
                "6",
                "--hidden",
                "10",
                "--cues",
                "1",
                "--test",
                "12",
                "--shards",
                "4",
            ]),
        ),
        (
            "pattern_generation",
            strings(&["--iterations", "3", "--hidden", "10", "--steps", "40", "--shards", "4"]),
        ),
        (
            "custom_model",
            strings(&["--epochs", "2", "--hidden", "6", "--shards", "4"]),
        ),
    ]
}

#[test]
fn every_example_is_bit_identical_on_1_2_and_4_ranks() {
    for (i, (name, args)) in jobs().into_iter().enumerate() {
        let out = |tag: &str| scratch(&format!("mpi-{name}-{i}-{tag}"));
        let alone = out("alone");
        let flags = |dir: &Path| [args.clone(), strings(&["--output", &dir.display().to_string()])].concat();
        let single = run(0, name, &flags(&alone));
        for ranks in [1, 2, 4] {
            let dir = out(&format!("{ranks}"));
            let job = run(ranks, name, &flags(&dir));
            assert_same_run(&alone, &dir, &format!("{name}: 1 process against {ranks} ranks"));
            // Rank 0 alone prints: the same lines as the single process (timings aside).
            let lines = |o: &Output| String::from_utf8_lossy(&o.stdout).lines().count();
            assert_eq!(
                lines(&job),
                lines(&single),
                "{name} on {ranks} ranks printed other lines"
            );
        }
    }
}

#[test]
fn a_run_resumes_on_another_rank_count() {
    let args = strings(&["--epochs", "3", "--hidden", "6", "--shards", "4"]);
    let (straight, split) = (scratch("mpi-resume-a"), scratch("mpi-resume-b"));
    let out = |dir: &Path| strings(&["--output", &dir.display().to_string()]);
    run(0, "custom_model", &[args.clone(), out(&straight)].concat());
    run(
        2,
        "custom_model",
        &[args.clone(), out(&split), strings(&["--stop-after", "1"])].concat(),
    );
    run(
        4,
        "custom_model",
        &[args.clone(), out(&split), strings(&["--stop-after", "1", "--resume"])].concat(),
    );
    run(0, "custom_model", &[args, out(&split), strings(&["--resume"])].concat());
    assert_same_run(&straight, &split, "custom_model: 2 ranks, then 4, then 1 process");
}

/// Runs `cmd` to its end, which must come before `limit`; its exit code and error output.
fn finish(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun");
    let (status, stderr) =
        wait(child, limit).unwrap_or_else(|| panic!("the job still ran after {limit:?}: a rank was left waiting"));
    (status.code(), stderr)
}

/// Rank 1 reads a file rank 0 does not (mpirun's MPMD form gives each rank its own flags):
/// rank 0 reports rank 1's error and every rank ends.
#[test]
fn a_rank_that_cannot_read_its_data_ends_the_job() {
    let dir = scratch("mpi-bad-file");
    let bad = dir.join("broken.bin");
    std::fs::write(&bad, b"not a spike file").unwrap();
    let common = strings(&["--epochs", "1", "--hidden", "6", "--limit", "20", "--output"]);
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", "1"])
        .arg(binary("spoken_digits"))
        .args(&common)
        .arg(dir.join("out"))
        .args(["--data", &bundled_data()])
        .args([":", "-n", "1"])
        .arg(binary("spoken_digits"))
        .args(&common)
        .arg(dir.join("out"))
        .args(["--data", &bad.display().to_string()])
        .env("RAYON_NUM_THREADS", "1");
    let (code, stderr) = finish(cmd, Duration::from_secs(120));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("rank 1:") && stderr.contains("broken.bin"),
        "rank 0 should name rank 1 and its file: {stderr}"
    );
}

/// The processes of the running job `binary` with MPI rank `rank` (from their environment).
fn pids_of_rank(binary: &Path, rank: usize) -> Vec<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary)
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
        })
        .collect()
}

/// SIGKILL of one rank mid-training: mpirun notices and ends the others.
#[test]
fn a_killed_rank_ends_the_job() {
    let dir = scratch("mpi-kill");
    let args = strings(&[
        "--epochs",
        "100000",
        "--hidden",
        "6",
        "--output",
        &dir.display().to_string(),
    ]);
    let mut child = launch(2, "custom_model", &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mpirun");
    let start = Instant::now();
    while !dir.join("last.safetensors").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let exe = std::fs::canonicalize(binary("custom_model")).unwrap();
    let victims = pids_of_rank(&exe, 1);
    assert_eq!(victims.len(), 1, "one process of rank 1");
    let killed = Command::new("kill")
        .args(["-9", &victims[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let killed_at = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the job ended well after losing a rank");
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "rank 0 still runs a minute after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids_of_rank(&exe, 0).is_empty(), "rank 0 outlived the job");
}

/// The summary records the job's size.
#[test]
fn the_summary_records_the_rank_count() {
    let dir = scratch("mpi-summary");
    run(
        2,
        "custom_model",
        &strings(&["--epochs", "1", "--hidden", "4", "--output", &dir.display().to_string()]),
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["ranks"], 2);
}
