//! What the examples' integration tests share: the built binaries, scratch folders, the
//! bundled data and checkpoint tensors.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;

/// The example binary `name`, built by cargo with this test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    // `cargo test -p plasticity-examples` (and `--workspace`) builds the examples first;
    // `--test cli` alone does not, and would run stale binaries.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = std::fs::read_dir(source.join("support"))
        .expect("support folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .chain([source.join(format!("{name}.rs"))])
        .filter_map(|p| modified(&p))
        .max();
    assert!(
        modified(&path).is_some_and(|built| newest_source.is_none_or(|s| built >= s)),
        "{} is missing or older than its sources: run `cargo test -p plasticity-examples`, which builds the examples",
        path.display()
    );
    path
}

/// A fresh folder for one run.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plasticity-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// The bundled spoken-digits set.
pub fn bundled_data() -> String {
    format!("{}/data/spoken_digits.bin", env!("CARGO_MANIFEST_DIR"))
}

/// The tensors of a checkpoint by name (raw little-endian bytes).
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("checkpoint");
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

/// `metrics.csv` of a run without its wall-clock column.
pub fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .expect("metrics.csv")
        .lines()
        .map(|l| {
            let mut cells: Vec<&str> = l.split(',').collect();
            cells.remove(5);
            cells.join(",")
        })
        .collect()
}

/// The runs in folders `a` and `b` ended with bit-identical checkpoint tensors and the same
/// metrics (all but the wall-clock seconds).
pub fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (
        tensors(&a.join("last.safetensors")),
        tensors(&b.join("last.safetensors")),
    );
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{what}");
    for (k, v) in &ta {
        assert!(*v == tb[k], "{what}: tensor {k} differs");
    }
    assert_eq!(metrics(a), metrics(b), "{what}: metrics");
}

/// Waits for `child` (its standard error piped) at most `limit`: its exit status and error
/// output, or `None` when it was still running at the deadline (it is then killed).
pub fn wait(mut child: Child, limit: Duration) -> Option<(ExitStatus, String)> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            return Some((status, stderr));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
