//! What a training run leaves for its user: `metrics.csv`, one row per epoch, rewritten
//! atomically after each; and `summary.json`, the full configuration, versions, final figures
//! and timings. Both are plain formats any plotting tool reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::write_atomic;

/// The per-epoch record of a run.
pub struct RunLog {
    output: PathBuf,
    program: &'static str,
    extra: Vec<&'static str>,
    csv: String,
    start: Instant,
}

/// The columns every run's `metrics.csv` has, before its own.
const COLUMNS: &str = "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds";

fn cell(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v}"))
}

impl RunLog {
    /// A log of `program` writing into `output`, with `extra` columns after the common ones
    /// (a task's own metric where it has no accuracy).
    pub fn new(output: &Path, program: &'static str, extra: &[&'static str]) -> Self {
        let mut csv = COLUMNS.to_string();
        for c in extra {
            csv.push(',');
            csv.push_str(c);
        }
        csv.push('\n');
        RunLog {
            output: output.to_path_buf(),
            program,
            extra: extra.to_vec(),
            csv,
            start: Instant::now(),
        }
    }

    /// Appends one epoch's row (missing values left empty) and rewrites `metrics.csv`.
    pub fn epoch(
        &mut self,
        epoch: usize,
        train: (f64, Option<f64>),
        test: (Option<f64>, Option<f64>),
        extra: &[f64],
    ) -> Result<()> {
        anyhow::ensure!(
            extra.len() == self.extra.len(),
            "metrics.csv: {} values for the {} extra columns",
            extra.len(),
            self.extra.len()
        );
        let seconds = self.start.elapsed().as_secs_f64();
        write!(
            self.csv,
            "{epoch},{},{},{},{},{seconds:.3}",
            train.0,
            cell(train.1),
            cell(test.0),
            cell(test.1)
        )?;
        for v in extra {
            write!(self.csv, ",{v}")?;
        }
        self.csv.push('\n');
        write_atomic(&self.output.join("metrics.csv"), self.csv.as_bytes())
    }

    /// Writes `summary.json`: the program, the versions, the configuration (`config`, e.g.
    /// the parsed flags), the final `results`, and the run's duration.
    pub fn summary(&self, config: &impl Serialize, results: serde_json::Value) -> Result<()> {
        let summary = json!({
            "program": self.program,
            "plasticity_version": env!("CARGO_PKG_VERSION"),
            "config": config,
            "results": results,
            "seconds": self.start.elapsed().as_secs_f64(),
            "threads": rayon::current_num_threads(),
        });
        write_atomic(
            &self.output.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )
    }
}
