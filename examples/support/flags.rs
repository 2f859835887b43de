//! Checks of command-line values, made before any work starts. Every message names the flag,
//! the value given and what was expected, e.g. `--batch 0: expected 1 to 65536`.
//!
//! Counts have upper limits as well as lower ones: a value far beyond anything a run on one
//! machine can use (a typing slip, a shell variable gone wrong) is refused at once instead of
//! failing minutes later on an allocation. [`memory`] compares a run's estimated size with
//! the memory the machine has.

use std::ops::RangeInclusive;

use anyhow::{Result, bail};

/// `value` of `flag` lies in `range`.
pub fn count(flag: &str, value: usize, range: RangeInclusive<usize>) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        bail!("{flag} {value}: expected {} to {}", range.start(), range.end())
    }
}

/// An optional count: checked when given.
pub fn optional(flag: &str, value: Option<usize>, range: RangeInclusive<usize>) -> Result<()> {
    value.map_or(Ok(()), |v| count(flag, v, range))
}

/// `value` of `flag` is finite and in `(0, max]`.
pub fn positive(flag: &str, value: f64, max: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(())
    } else {
        bail!("{flag} {value}: expected a number > 0 and at most {max}")
    }
}

/// `value` of `flag` is finite and in `[0, max]`.
pub fn non_negative(flag: &str, value: f64, max: f64) -> Result<()> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(())
    } else {
        bail!("{flag} {value}: expected a number from 0 to {max}")
    }
}

/// Bytes of memory available to this process, as the kernel estimates it (`MemAvailable`),
/// or `None` where that cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// What a network of `hidden` recurrent neurons on `inputs` inputs needs to train on batches
/// of `batch` sequences of `steps` steps, estimated from above: its weights, gradients and
/// optimiser moments (16 bytes per synapse), plus e-prop's per-synapse traces and their
/// filtered forms for every sample (16 bytes per synapse and sample; factorised traces take
/// less) or BPTT's tape (32 bytes per neuron, sample and step).
pub fn training_bytes(eprop: bool, hidden: usize, inputs: usize, batch: usize, steps: usize) -> f64 {
    let synapses = hidden as f64 * (inputs + hidden) as f64;
    let state = if eprop {
        16.0 * batch as f64 * synapses
    } else {
        32.0 * (batch * steps * hidden) as f64
    };
    16.0 * synapses + state
}

/// A run that needs about `bytes` (`what` says for what, and which flags set it) fits in the
/// memory available; refused with both figures otherwise.
pub fn memory(bytes: f64, what: &str) -> Result<()> {
    if let Some(avail) = available_memory()
        && bytes > avail as f64
    {
        let gib = |b: f64| b / f64::from(1u32 << 30);
        bail!(
            "{what} needs about {:.1} GiB, this machine has {:.1} GiB available",
            gib(bytes),
            gib(avail as f64)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_flag_value_and_expectation() {
        assert_eq!(
            count("--batch", 0, 1..=8).unwrap_err().to_string(),
            "--batch 0: expected 1 to 8"
        );
        assert!(count("--batch", 8, 1..=8).is_ok());
        assert!(optional("--pool", None, 1..=8).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 11.0] {
            let e = positive("--lr", bad, 10.0).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--lr {bad}: expected")), "{e}");
        }
        assert!(non_negative("--weight-decay", 0.0, 1.0).is_ok());
        assert!(non_negative("--weight-decay", f64::NAN, 1.0).is_err());
        if available_memory().is_some() {
            assert!(memory(1e30, "this").unwrap_err().to_string().contains("GiB"));
        }
        assert!(memory(1.0, "this").is_ok());
        // 10 × (10 + 10) synapses: 16 B each for the weights, 16 B per sample for e-prop.
        assert_eq!(training_bytes(true, 10, 10, 2, 50), 16.0 * 200.0 * 3.0);
        assert_eq!(training_bytes(false, 10, 10, 2, 50), 16.0 * 200.0 + 32.0 * 1000.0);
    }
}
