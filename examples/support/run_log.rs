//! What a training run leaves for its user: `metrics.csv`, one row per epoch, rewritten
//! atomically after each; and `summary.json`, the full configuration, versions, final figures
//! and timings. Both are plain formats any plotting tool reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
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
    /// Seconds spent by the runs this one resumes.
    before: f64,
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
            before: 0.0,
        }
    }

    /// Continues the log of a resumed run: the rows of the first `done` epochs of the
    /// existing `metrics.csv` are kept (later rows, from epochs whose checkpoint was never
    /// written, are dropped), and `seconds` continues from the last kept row.
    pub fn resume(&mut self, done: usize) -> Result<()> {
        let path = self.output.join("metrics.csv");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| path.display().to_string()),
        };
        let mut lines = text.lines();
        let header = self.csv.trim_end();
        anyhow::ensure!(
            lines.next() == Some(header),
            "{}: header differs from this program's ({header})",
            path.display()
        );
        for line in lines {
            let epoch: usize = line
                .split(',')
                .next()
                .and_then(|e| e.parse().ok())
                .with_context(|| format!("{}: malformed row {line:?}", path.display()))?;
            if epoch > done {
                break;
            }
            self.before = line
                .split(',')
                .nth(5)
                .and_then(|s| s.parse().ok())
                .unwrap_or(self.before);
            self.csv.push_str(line);
            self.csv.push('\n');
        }
        Ok(())
    }

    /// The values of `column` by epoch, for plots: `(epoch, value)` for every row where
    /// the column has a value.
    pub fn series(&self, column: &str) -> Vec<(f64, f64)> {
        let mut lines = self.csv.lines();
        let Some(index) = lines.next().and_then(|h| h.split(',').position(|c| c == column)) else {
            return Vec::new();
        };
        lines
            .filter_map(|line| {
                let cells: Vec<&str> = line.split(',').collect();
                Some((cells.first()?.parse().ok()?, cells.get(index)?.parse().ok()?))
            })
            .collect()
    }

    /// Seconds since the run started, including the runs it resumes.
    pub fn seconds(&self) -> f64 {
        self.before + self.start.elapsed().as_secs_f64()
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
        let seconds = self.seconds();
        if !crate::job::is_root() {
            return Ok(());
        }
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
        if !crate::job::is_root() {
            return Ok(());
        }
        let summary = json!({
            "program": self.program,
            "plasticity_version": env!("CARGO_PKG_VERSION"),
            "config": config,
            "results": results,
            "seconds": self.seconds(),
            "threads": rayon::current_num_threads(),
            "ranks": crate::job::ranks(),
        });
        write_atomic(
            &self.output.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )
    }
}
