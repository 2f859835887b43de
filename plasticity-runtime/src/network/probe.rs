//! Probes: what a run records besides the readout and the spikes.

use ndarray::{Array2, ArrayViewMut2, Axis};

use super::{Buffers, Network};
use crate::error::{Result, invalid};
use crate::real::Float;

/// What a probe records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A state variable of the model, by name (e.g. `"v"`), after the step.
    State(String),
    /// The output `z` (spikes) at the step.
    Spikes,
    /// The synaptic current into an input port, by name, at the step.
    Current(String),
    /// The readout `y` at the step (the population is ignored).
    Readout,
}

/// A recording request for [`Network::run_with_probes`]: one signal of chosen neurons of one
/// population, every step, returned as `[T, B, neurons]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The population's name.
    pub population: String,
    /// What to record.
    pub signal: Signal,
    /// Which neurons (indices within the population); `None` for all of them.
    pub neurons: Option<Vec<usize>>,
}

impl Probe {
    /// `signal` of every neuron of `population`.
    fn every(population: &str, signal: Signal) -> Self {
        Probe {
            population: population.into(),
            signal,
            neurons: None,
        }
    }
    /// State variable `state` of every neuron of `population`.
    pub fn state(population: &str, state: &str) -> Self {
        Self::every(population, Signal::State(state.into()))
    }
    /// The spikes (outputs) of every neuron of `population`.
    pub fn spikes(population: &str) -> Self {
        Self::every(population, Signal::Spikes)
    }
    /// The current into input port `port` of every neuron of `population`.
    pub fn current(population: &str, port: &str) -> Self {
        Self::every(population, Signal::Current(port.into()))
    }
    /// The readout, every output.
    pub fn readout() -> Self {
        Self::every("", Signal::Readout)
    }
    /// Only these neurons (or readout outputs).
    pub fn neurons(mut self, neurons: impl Into<Vec<usize>>) -> Self {
        self.neurons = Some(neurons.into());
        self
    }

    /// Checks the probe against `net` and finds what it reads.
    pub(crate) fn resolve<F: Float>(&self, net: &Network<F>) -> Result<Resolved> {
        let (pop, size) = if self.signal == Signal::Readout {
            (0, net.n_out())
        } else {
            let p = net.population_index(&self.population).ok_or_else(|| {
                let names: Vec<&str> = net.populations.iter().map(|p| p.name.as_str()).collect();
                invalid("probe population", &self.population, &format!("one of {names:?}"))
            })?;
            (p, net.populations[p].size)
        };
        let kind = match &self.signal {
            Signal::Readout => Kind::Readout,
            Signal::Spikes => Kind::Spikes,
            Signal::State(name) => {
                let states = net.populations[pop].pattern().states;
                Kind::State(states.iter().position(|s| s == name).ok_or_else(|| {
                    invalid(
                        &format!("probe state of population {}", self.population),
                        name,
                        &format!("one of the model's states {states:?}"),
                    )
                })?)
            }
            Signal::Current(name) => {
                let ports = net.populations[pop].pattern().inputs;
                Kind::Current(ports.iter().position(|s| s == name).ok_or_else(|| {
                    invalid(
                        &format!("probe port of population {}", self.population),
                        name,
                        &format!("one of the model's input ports {ports:?}"),
                    )
                })?)
            }
        };
        let neurons = match &self.neurons {
            None => (0..size).collect(),
            Some(list) => {
                if let Some(&bad) = list.iter().find(|&&j| j >= size) {
                    return Err(invalid("probe neuron", bad, &format!("an index < {size}")));
                }
                list.clone()
            }
        };
        Ok(Resolved { pop, kind, neurons })
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    State(usize),
    Spikes,
    Current(usize),
    Readout,
}

/// A probe checked against a network.
pub(crate) struct Resolved {
    pop: usize,
    kind: Kind,
    neurons: Vec<usize>,
}

impl Resolved {
    pub fn width(&self) -> usize {
        self.neurons.len()
    }

    /// Writes this step's values into `out` (`[B, neurons]`).
    pub fn record<F: Float>(&self, net: &Network<F>, bufs: &Buffers<F>, y: &Array2<F>, out: &mut ArrayViewMut2<F>) {
        let buf = &bufs.pops[self.pop];
        let n = net.populations[self.pop].size;
        let k = net.populations[self.pop].num_states();
        for (b, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
            for (o, &j) in row.iter_mut().zip(&self.neurons) {
                *o = match self.kind {
                    Kind::State(r) => buf.state[b * (k * n).max(1) + r * n + j],
                    Kind::Spikes => buf.z[[b, j]],
                    Kind::Current(port) => buf.current[[b, port, j]],
                    Kind::Readout => y[[b, j]],
                };
            }
        }
    }
}
