//! The examples' binaries as a user runs them: hostile flag values end in a clean error or a
//! correct run (never a panic, a crash or a hang); an interrupted run resumed with `--resume`
//! ends bit-identical to one that was never interrupted; a run killed at any moment leaves a
//! checkpoint that loads and resumes.
//!
//! The binaries are the ones `cargo test` builds next to this test (`target/<profile>/examples`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_run, binary, bundled_data, scratch, wait};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How a run ended.
enum Outcome {
    /// Exited with this code.
    Exit(i32, String),
    /// Ended by a signal (a crash: abort, segfault).
    Signal(String),
    /// Still running at the deadline (killed).
    Hang,
}

impl Outcome {
    /// What happened, with the program's error output.
    fn describe(&self) -> String {
        match self {
            Outcome::Exit(code, stderr) => format!("exit code {code}: {stderr}"),
            Outcome::Signal(stderr) => format!("killed by a signal: {stderr}"),
            Outcome::Hang => "still running at the deadline".into(),
        }
    }
}

/// Runs `name` with `args`, waiting at most `limit`.
fn run(name: &str, args: &[String], limit: Duration) -> Outcome {
    let child = Command::new(binary(name))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    match wait(child, limit) {
        Some((status, stderr)) => match status.code() {
            Some(code) => Outcome::Exit(code, stderr),
            None => Outcome::Signal(stderr),
        },
        None => Outcome::Hang,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

/// Runs that must succeed.
fn ok(name: &str, args: &[String]) {
    match run(name, args, Duration::from_secs(600)) {
        Outcome::Exit(0, _) => {}
        other => panic!("{name} {args:?}: {}", other.describe()),
    }
}

/// Each example, with flags that make a quick run, and its numeric flags.
fn examples(out: &Path) -> Vec<(&'static str, Vec<String>, Vec<&'static str>)> {
    let o = |n: &str| out.join(n).display().to_string();
    vec![
        (
            "spoken_digits",
            vec![
                "--data".into(),
                bundled_data(),
                "--epochs".into(),
                "1".into(),
                "--hidden".into(),
                "8".into(),
                "--limit".into(),
                "16".into(),
                "--steps".into(),
                "20".into(),
                "--loss-steps".into(),
                "10".into(),
                "--batch".into(),
                "8".into(),
                "--output".into(),
                o("sd"),
            ],
            vec![
                "--channels",
                "--epochs",
                "--hidden",
                "--batch",
                "--steps",
                "--duration",
                "--pool",
                "--lr",
                "--weight-decay",
                "--loss-steps",
                "--readout-tau",
                "--seed",
                "--limit",
                "--shift-steps",
                "--shift-channels",
                "--stop-after",
                "--shards",
            ],
        ),
        (
            "evidence_accumulation",
            strings(&[
                "--batches",
                "2",
                "--batch",
                "2",
                "--hidden",
                "8",
                "--cues",
                "1",
                "--test",
                "8",
            ])
            .into_iter()
            .chain(["--output".into(), o("ea")])
            .collect(),
            vec![
                "--batches",
                "--batch",
                "--hidden",
                "--cues",
                "--lr",
                "--seed",
                "--test",
                "--stop-after",
                "--shards",
            ],
        ),
        (
            "pattern_generation",
            strings(&["--iterations", "2", "--hidden", "8", "--steps", "20"])
                .into_iter()
                .chain(["--output".into(), o("pg")])
                .collect(),
            vec![
                "--iterations",
                "--hidden",
                "--steps",
                "--lr",
                "--seed",
                "--stop-after",
                "--shards",
            ],
        ),
        (
            "custom_model",
            strings(&["--epochs", "1", "--hidden", "4"])
                .into_iter()
                .chain(["--output".into(), o("cm")])
                .collect(),
            vec!["--epochs", "--hidden", "--seed", "--stop-after", "--shards"],
        ),
        (
            "exact_gradients",
            strings(&["--model", "lif"]),
            vec!["--connectivity", "--seed"],
        ),
        (
            "scaling",
            strings(&[
                "--hidden",
                "8",
                "--inputs",
                "4",
                "--batch",
                "2",
                "--steps",
                "5",
                "--iters",
                "1",
                "--no-triad",
            ]),
            vec![
                "--hidden",
                "--inputs",
                "--batch",
                "--steps",
                "--kappa",
                "--connectivity",
                "--threads",
                "--iters",
                "--shards",
            ],
        ),
        (
            "make_spoken_digits",
            strings(&["--train-speakers", "1", "--test-speakers", "1", "--channels", "8"])
                .into_iter()
                .chain(["--out".into(), o("msd.bin")])
                .collect(),
            vec!["--train-speakers", "--test-speakers", "--channels"],
        ),
    ]
}

/// Replaces (or appends) `flag value` in `args`.
fn with(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut a = args.to_vec();
    match a.iter().position(|x| x == flag) {
        Some(i) => a[i + 1] = value.to_string(),
        None => a.extend([flag.to_string(), value.to_string()]),
    }
    a
}

#[test]
fn hostile_flag_values_end_cleanly() {
    let out = scratch("hostile");
    let hostile = [
        "0",
        "-1",
        "NaN",
        "inf",
        "1e300",
        "18446744073709551615",
        "4294967297",
        "x",
    ];
    let mut failures = Vec::new();
    let mut runs = 0;
    for (name, base, numeric) in examples(&out) {
        for flag in numeric {
            for value in hostile {
                let args = with(&base, flag, value);
                runs += 1;
                match run(name, &args, Duration::from_secs(300)) {
                    // A correct run, a clean error, or clap's usage error.
                    Outcome::Exit(0..=2, stderr) if !stderr.contains("panicked") => {}
                    other => failures.push(format!("{name} {flag} {value}: {}", other.describe())),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{runs} runs, failures:\n{}", failures.join("\n"));
}

#[test]
fn refusals_name_the_flag() {
    let out = scratch("refusals");
    let cases: [(&str, &str, &str); 6] = [
        ("spoken_digits", "--batch", "0"),
        ("spoken_digits", "--duration", "0"),
        ("spoken_digits", "--pool", "0"),
        ("spoken_digits", "--readout-tau", "NaN"),
        ("evidence_accumulation", "--hidden", "1"),
        ("scaling", "--kappa", "1"),
    ];
    let all = examples(&out);
    for (name, flag, value) in cases {
        let base = &all.iter().find(|e| e.0 == name).expect("example").1;
        match run(name, &with(base, flag, value), Duration::from_secs(120)) {
            Outcome::Exit(1, stderr) => assert!(
                stderr.contains(&format!("{flag} {value}")),
                "{name} {flag} {value}: {stderr}"
            ),
            other => panic!("{name} {flag} {value}: {}", other.describe()),
        }
    }
}

/// `args` run straight through against the same run stopped half-way (`--stop-after`) and
/// resumed: the final checkpoints hold bit-identical tensors and the metrics agree.
fn resumes_exactly(name: &str, args: &[&str], stop_after: &str) {
    let tag = format!("{name}-{}", args.join("").replace(['-', '/'], ""));
    let (straight, split) = (scratch(&format!("{tag}-a")), scratch(&format!("{tag}-b")));
    let mut base = strings(args);
    if name == "spoken_digits" {
        base.extend(["--data".into(), bundled_data()]);
    }
    let out = |dir: &Path| ["--output".to_string(), dir.display().to_string()];
    ok(name, &[base.clone(), out(&straight).to_vec()].concat());
    ok(
        name,
        &[
            base.clone(),
            out(&split).to_vec(),
            strings(&["--stop-after", stop_after]),
        ]
        .concat(),
    );
    ok(name, &[base, out(&split).to_vec(), strings(&["--resume"])].concat());
    assert_same_run(&straight, &split, &format!("{name} {args:?}: straight against resumed"));
}

#[test]
fn resumed_runs_are_bit_identical() {
    let sd = [
        "--epochs",
        "4",
        "--hidden",
        "8",
        "--limit",
        "24",
        "--steps",
        "20",
        "--loss-steps",
        "10",
        "--batch",
        "8",
    ];
    resumes_exactly("spoken_digits", &sd, "2");
    resumes_exactly("spoken_digits", &[&sd[..], &["--algorithm", "bptt"]].concat(), "2");
    resumes_exactly(
        "evidence_accumulation",
        &[
            "--batches",
            "120",
            "--batch",
            "2",
            "--hidden",
            "8",
            "--cues",
            "1",
            "--test",
            "8",
        ],
        "1",
    );
    let pg = ["--iterations", "4", "--hidden", "8", "--steps", "30"];
    resumes_exactly("pattern_generation", &pg, "2");
    resumes_exactly("pattern_generation", &[&pg[..], &["--bptt"]].concat(), "2");
    resumes_exactly("pattern_generation", &[&pg[..], &["--output-population"]].concat(), "2");
    resumes_exactly("custom_model", &["--epochs", "4", "--hidden", "4"], "2");
}

#[test]
fn resume_refuses_changed_flags_and_missing_files() {
    let dir = scratch("refuse");
    let base = strings(&["--epochs", "2", "--hidden", "4", "--output", &dir.display().to_string()]);
    let resume = [base.clone(), strings(&["--resume"])].concat();
    match run("custom_model", &resume, Duration::from_secs(120)) {
        Outcome::Exit(1, e) => assert!(e.contains("does not exist"), "{e}"),
        other => panic!("{}", other.describe()),
    }
    ok("custom_model", &with(&base, "--stop-after", "1"));
    let mut changed = with(&base, "--seed", "4");
    changed.push("--resume".into());
    match run("custom_model", &changed, Duration::from_secs(120)) {
        Outcome::Exit(1, e) => assert!(e.contains("--seed 3 (now 4)"), "{e}"),
        other => panic!("{}", other.describe()),
    }
}

/// Training processes killed with SIGKILL at random moments: the checkpoint on disk always
/// loads and training resumes from it.
#[test]
fn killed_runs_leave_a_checkpoint_that_resumes() {
    let dir = scratch("kill");
    let args = strings(&[
        "--epochs",
        "100000",
        "--hidden",
        "4",
        "--output",
        &dir.display().to_string(),
    ]);
    let checkpoint = dir.join("last.safetensors");
    let mut rng = StdRng::seed_from_u64(11);
    let trials = 30;
    for trial in 0..trials {
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = Command::new(binary("custom_model"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Wait for the first checkpoint, then kill at a random moment of the next epochs
        // (a checkpoint is written after every epoch, so many kills land in or near a write).
        let start = Instant::now();
        while !checkpoint.exists() {
            assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint written");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..400_000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        // Every checkpoint left on disk is complete and resumes.
        let resumed = [args.clone(), strings(&["--resume", "--stop-after", "1"])].concat();
        match run("custom_model", &resumed, Duration::from_secs(300)) {
            Outcome::Exit(0, _) => {}
            other => panic!("trial {trial}: resume after SIGKILL failed: {}", other.describe()),
        }
        // A write cut short leaves a temporary file; resuming removes it.
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("output folder")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "trial {trial}: {leftovers:?} left behind");
    }
}

/// NEST's e-prop tests reproduced through the public API (regression; classification with
/// batch 1 and 2): `--check` fails unless every iteration's loss is within 1e-9 of NEST's
/// reference; a broken fixture file, or fixtures of the other task, are clean errors.
#[test]
fn nest_reference_reproduces_nest() {
    let data = format!("{}/data/nest", env!("CARGO_MANIFEST_DIR"));
    let fixtures = format!("{data}/regression_seed1.safetensors");
    ok("nest_reference", &strings(&["--check", "--fixtures", &fixtures]));
    for batch in [1, 2] {
        let file = format!("{data}/classification_batch{batch}_seed1.safetensors");
        ok(
            "nest_reference",
            &strings(&["--task", "classification", "--check", "--fixtures", &file]),
        );
    }
    match run(
        "nest_reference",
        &strings(&["--task", "classification", "--fixtures", &fixtures]),
        Duration::from_secs(60),
    ) {
        Outcome::Exit(1, stderr) => assert!(stderr.contains("fixtures of the regression task"), "{stderr}"),
        other => panic!("{}", other.describe()),
    }
    let dir = scratch("nest");
    let broken = dir.join("broken.safetensors");
    let bytes = std::fs::read(&fixtures).expect("fixtures");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).expect("write");
    match run(
        "nest_reference",
        &strings(&["--fixtures", &broken.display().to_string()]),
        Duration::from_secs(60),
    ) {
        Outcome::Exit(1, stderr) => assert!(stderr.contains("broken.safetensors"), "{stderr}"),
        other => panic!("{}", other.describe()),
    }
}

/// A binary built without the `mpi` feature, started by `mpirun` as one of several ranks,
/// refuses to run: each copy would train alone and write the same files.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_several_ranks() {
    let out = Command::new(binary("custom_model"))
        .args(["--epochs", "1", "--hidden", "4", "--output"])
        .arg(scratch("no-mpi"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .expect("run custom_model");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--features mpi"), "{stderr}");
}
