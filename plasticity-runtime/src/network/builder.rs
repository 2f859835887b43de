//! Building networks: populations, projections, readout.

use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Connectivity, MAX_DYNAMIC, MAX_PORTS, MAX_STATES, Network, Population, Projection, Readout, Source};
use crate::error::{Result, check_finite, invalid};
use crate::init::Init;
use crate::model::NeuronModel;
use crate::params::Parameters;
use crate::real::Float;

/// A population to add: `size` neurons of `model`.
#[derive(Clone, Debug)]
pub struct PopulationSpec<M> {
    /// Name, unique in the network.
    pub name: String,
    /// The neuron model and its parameter values (learnable ones are the starting values).
    pub model: M,
    /// Number of neurons.
    pub size: usize,
    /// A trainable bias per neuron and input port.
    pub bias: bool,
}

impl<M: NeuronModel> PopulationSpec<M> {
    /// `size` neurons of `model`, without bias.
    pub fn new(name: &str, model: M, size: usize) -> Self {
        PopulationSpec {
            name: name.into(),
            model,
            size,
            bias: false,
        }
    }
    /// With a bias.
    pub fn bias(mut self, yes: bool) -> Self {
        self.bias = yes;
        self
    }
}

/// A projection to add: weights from `source` (`"input"` or a population's name) onto an
/// input port of `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionSpec {
    /// `"input"` or the name of the source population.
    pub source: String,
    /// The name of the target population.
    pub target: String,
    /// The target model's input port; `None` for a model with exactly one port.
    pub port: Option<String>,
    /// Initialisation (the fan-in is the source's size).
    pub init: Init,
    /// Which synapses exist.
    pub connectivity: Connectivity,
    /// Keep self-connections when the source is the target (default: no).
    pub autapses: bool,
    /// Deliver the source's output of the previous step even when the source is stepped
    /// before the target (default: no). A projection from the same or a later population is
    /// always delayed; this makes a forward one delayed too, as the connections between the
    /// parts of one recurrent network split into populations (LIF and ALIF neurons, say) are.
    pub delayed: bool,
}

impl ProjectionSpec {
    /// From `source` (`"input"` or a population) to `target`, dense, Gaussian fan-in
    /// initialisation.
    pub fn new(source: &str, target: &str) -> Self {
        ProjectionSpec {
            source: source.into(),
            target: target.into(),
            port: None,
            init: Init::default(),
            connectivity: Connectivity::Dense,
            autapses: false,
            delayed: false,
        }
    }
    /// From the network's input to `target`.
    pub fn input(target: &str) -> Self {
        Self::new(INPUT, target)
    }
    /// Onto input port `port` of the target model.
    pub fn port(mut self, port: &str) -> Self {
        self.port = Some(port.into());
        self
    }
    /// Weight initialisation.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// Which synapses exist.
    pub fn connectivity(mut self, connectivity: Connectivity) -> Self {
        self.connectivity = connectivity;
        self
    }
    /// Deliver the source's previous-step output (see [`ProjectionSpec::delayed`]).
    pub fn delayed(mut self, yes: bool) -> Self {
        self.delayed = yes;
        self
    }
    /// Keep self-connections of a population onto itself.
    pub fn autapses(mut self, yes: bool) -> Self {
        self.autapses = yes;
        self
    }
}

/// The name projections use for the network's input.
const INPUT: &str = "input";

/// How the readout is built: `y^t = κ y^{t-1} + g (Σ_s W_s z_s^t + b)`, the gain `g` 1 or
/// `1 − κ` ([`ReadoutGain`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadoutSpec {
    /// Number of outputs (classes or regression targets).
    pub size: usize,
    /// Leak `κ ∈ [0, 1)`; 0 is a memoryless readout.
    pub kappa: f64,
    /// The gain `g` of the readout's drive.
    pub gain: ReadoutGain,
    /// With a bias `b`.
    pub bias: bool,
    /// Initialisation of `W^out` (the fan-in is the total size of the sources).
    pub init: Init,
    /// The populations read; empty for the last population added.
    pub sources: Vec<String>,
    /// Instead of the leaky readout: the population whose outputs are `y`.
    pub population: Option<String>,
}

impl ReadoutSpec {
    /// `size` outputs, leak `kappa`, with bias, reading the last population.
    pub fn new(size: usize, kappa: f64) -> Self {
        ReadoutSpec {
            size,
            kappa,
            gain: ReadoutGain::One,
            bias: true,
            init: Init::default(),
            sources: Vec::new(),
            population: None,
        }
    }
    /// No leaky readout: the outputs `z` of population `name` (a model written in the neuron
    /// language, say a leaky integrator with a learnable time constant and an `out`) are the
    /// network's output `y`. Its size is the output size; projections onto it carry the
    /// trainable weights.
    pub fn population(name: &str) -> Self {
        ReadoutSpec {
            size: 0,
            kappa: 0.0,
            gain: ReadoutGain::One,
            bias: false,
            init: Init::Zeros,
            sources: Vec::new(),
            population: Some(name.into()),
        }
    }
    /// Reads these populations.
    pub fn from<S: AsRef<str>>(mut self, populations: impl IntoIterator<Item = S>) -> Self {
        self.sources = populations.into_iter().map(|s| s.as_ref().to_string()).collect();
        self
    }
    /// The gain of the readout's drive: `ReadoutGain::OneMinusKappa` for Bellec's and NEST's
    /// normalised low-pass readout.
    pub fn gain(mut self, gain: ReadoutGain) -> Self {
        self.gain = gain;
        self
    }
    /// With or without bias.
    pub fn bias(mut self, yes: bool) -> Self {
        self.bias = yes;
        self
    }
    /// `W^out` initialisation.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
}

/// The gain `g` of a leaky readout `y^t = κ y^{t-1} + g (Σ_s W_s z_s^t + b)`.
///
/// With `1 − κ` the readout is a normalised low-pass filter of its drive (a constant drive `d`
/// settles at `y = d` rather than `d / (1 − κ)`); e-prop's trace filter then matches it,
/// `ē^t = κ ē^{t-1} + (1 − κ) e^t`, applied as the gain on the error part of the learning
/// signal (the rate-regularisation term is not scaled). Both forms are exact under BPTT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadoutGain {
    /// `g = 1`: `y^t = κ y^{t-1} + Σ_s W_s z_s^t + b`.
    #[default]
    One,
    /// `g = 1 − κ`: Bellec et al.'s TensorFlow code (`exp_convolve` of the spikes) and NEST's
    /// `eprop_readout_bsshslm_2020` (with `regular_spike_arrival` false).
    OneMinusKappa,
}

/// A layer in the layered shorthand: a population fed by the previous layer (or the input) on
/// every port, optionally recurrent. [`NetworkBuilder::layer`] names it `layer{index}`.
#[derive(Clone, Debug)]
pub struct LayerSpec<M> {
    /// The neuron model and its parameter values.
    pub model: M,
    /// Number of neurons.
    pub size: usize,
    /// Recurrent weights onto every port, from this layer's output at the previous step.
    pub recurrent: bool,
    /// Keep self-connections of the recurrent weights at zero.
    pub mask_self: bool,
    /// A trainable bias per neuron and port.
    pub bias: bool,
    /// Initialisation of the input weights.
    pub init_in: Init,
    /// Initialisation of the recurrent weights.
    pub init_rec: Init,
}

impl<M: NeuronModel> LayerSpec<M> {
    /// A feed-forward layer of `size` neurons, no bias, Gaussian fan-in initialisation.
    pub fn new(model: M, size: usize) -> Self {
        LayerSpec {
            model,
            size,
            recurrent: false,
            mask_self: true,
            bias: false,
            init_in: Init::default(),
            init_rec: Init::default(),
        }
    }
    /// With recurrent weights (self-connections masked).
    pub fn recurrent(mut self, yes: bool) -> Self {
        self.recurrent = yes;
        self
    }
    /// With a bias.
    pub fn bias(mut self, yes: bool) -> Self {
        self.bias = yes;
        self
    }
    /// Input weight initialisation.
    pub fn init_in(mut self, init: Init) -> Self {
        self.init_in = init;
        self
    }
    /// Recurrent weight initialisation.
    pub fn init_rec(mut self, init: Init) -> Self {
        self.init_rec = init;
        self
    }
}

/// Builds a [`Network`]. Weights are drawn in the order projections are added, then the
/// readout, from one generator seeded with [`NetworkBuilder::seed`].
#[derive(Debug)]
pub struct NetworkBuilder<F: Float> {
    n_in: usize,
    populations: Vec<(Population<F>, bool)>,
    projections: Vec<ProjectionSpec>,
    readout: Option<ReadoutSpec>,
    seed: u64,
    error: Option<crate::Error>,
}

impl<F: Float> NetworkBuilder<F> {
    /// A network with `n_in` input channels.
    pub fn new(n_in: usize) -> Self {
        NetworkBuilder {
            n_in,
            populations: Vec::new(),
            projections: Vec::new(),
            readout: None,
            seed: 0,
            error: None,
        }
    }

    /// Adds a population.
    pub fn population<M: NeuronModel>(mut self, spec: PopulationSpec<M>) -> Self {
        if self.error.is_none()
            && let Err(e) = check_model::<M>()
        {
            self.error = Some(e);
        }
        self.populations
            .push((Population::new(spec.name, spec.model, spec.size), spec.bias));
        self
    }

    /// Adds a projection.
    pub fn projection(mut self, spec: ProjectionSpec) -> Self {
        self.projections.push(spec);
        self
    }

    /// Appends a layer: a population `layer{index}` fed by the previous one (or the input)
    /// on every port, with recurrent weights on every port if asked.
    pub fn layer<M: NeuronModel>(self, spec: LayerSpec<M>) -> Self {
        let index = self.populations.len();
        let name = format!("layer{index}");
        let source = match index {
            0 => INPUT.to_string(),
            _ => self.populations[index - 1].0.name.clone(),
        };
        let mut b = self.population(PopulationSpec::new(&name, spec.model, spec.size).bias(spec.bias));
        for port in M::PATTERN.inputs {
            b = b.projection(ProjectionSpec::new(&source, &name).port(port).init(spec.init_in));
        }
        if spec.recurrent {
            for port in M::PATTERN.inputs {
                b = b.projection(
                    ProjectionSpec::new(&name, &name)
                        .port(port)
                        .init(spec.init_rec)
                        .autapses(!spec.mask_self),
                );
            }
        }
        b
    }

    /// Sets the readout.
    pub fn readout(mut self, spec: ReadoutSpec) -> Self {
        self.readout = Some(spec);
        self
    }

    /// Seed of the weight initialisation.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the structure, draws the weights and builds the network.
    pub fn build(self) -> Result<Network<F>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.n_in == 0 {
            return Err(invalid("n_in", 0, "at least 1 input channel"));
        }
        if self.populations.is_empty() {
            return Err(invalid("populations", 0, "at least one population (or layer)"));
        }
        let names: Vec<&str> = self.populations.iter().map(|(p, _)| p.name.as_str()).collect();
        for (i, (pop, _)) in self.populations.iter().enumerate() {
            if pop.size == 0 {
                return Err(invalid(
                    &format!("population {} size", pop.name),
                    0,
                    "at least 1 neuron",
                ));
            }
            if pop.name == INPUT || names[..i].contains(&pop.name.as_str()) {
                return Err(invalid(
                    "population name",
                    &pop.name,
                    "a name that is unique and not \"input\"",
                ));
            }
            check_finite(
                &format!("population {} constant partials", pop.name),
                pop.consts.iter().copied(),
            )?;
        }
        let find = |name: &str, what: &str| -> Result<usize> {
            names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| invalid(what, name, &format!("one of the populations {names:?}")))
        };
        let readout = self
            .readout
            .ok_or_else(|| invalid("readout", "none", "a readout (NetworkBuilder::readout)"))?;
        let output = readout
            .population
            .as_deref()
            .map(|name| find(name, "output population"))
            .transpose()?;
        if output.is_some()
            && (!readout.sources.is_empty() || readout.bias || readout.kappa != 0.0 || readout.gain != ReadoutGain::One)
        {
            return Err(invalid(
                "readout",
                "an output population with sources, bias, leak or gain",
                "ReadoutSpec::population(name) alone",
            ));
        }
        let readout = match output {
            Some(o) => ReadoutSpec {
                size: self.populations[o].0.size,
                ..readout
            },
            None => readout,
        };
        if readout.size == 0 {
            return Err(invalid("readout size", 0, "at least 1 output"));
        }
        if !(0.0..1.0).contains(&readout.kappa) {
            return Err(invalid("readout kappa", readout.kappa, "κ in [0, 1)"));
        }
        readout.init.validate("readout")?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut projections = Vec::new();
        let mut weights = Vec::new();
        for spec in &self.projections {
            let target = find(&spec.target, "projection target")?;
            let (source, n_pre, source_name) = if spec.source == INPUT {
                (Source::Input, self.n_in, INPUT)
            } else {
                let s = find(&spec.source, "projection source")?;
                (Source::Population(s), self.populations[s].0.size, names[s])
            };
            let pop = &self.populations[target].0;
            let ports = pop.pattern().inputs;
            let port = match &spec.port {
                Some(name) => ports.iter().position(|p| p == name).ok_or_else(|| {
                    invalid(
                        &format!("port of projection {source_name}->{}", pop.name),
                        name,
                        &format!("one of the input ports {ports:?} of model {}", pop.pattern().model),
                    )
                })?,
                None if ports.len() == 1 => 0,
                None => {
                    return Err(invalid(
                        &format!("port of projection {source_name}->{}", pop.name),
                        "none",
                        &format!(
                            "a port named with .port(..): model {} has ports {ports:?}",
                            pop.pattern().model
                        ),
                    ));
                }
            };
            let name = format!("{source_name}->{}.{}", pop.name, ports[port]);
            if projections.iter().any(|p: &Projection| p.name == name) {
                return Err(invalid(
                    "projection",
                    &name,
                    "at most one projection per source, target and port (merge their synapses into one)",
                ));
            }
            spec.init.validate(&format!("projection {name}"))?;
            if spec.delayed && source == Source::Input {
                return Err(invalid(
                    "projection",
                    format!("{name} delayed"),
                    "a population as the source of a delayed projection (the input is never delayed)",
                ));
            }
            let n_post = pop.size;
            let self_projection = source == Source::Population(target);
            let mut mask = match (&spec.connectivity, self_projection && !spec.autapses) {
                (Connectivity::Dense, false) => None,
                (c, _) => Some(c.to_mask(n_post, n_pre)?),
            };
            if let (Some(m), true) = (&mut mask, self_projection && !spec.autapses) {
                m.diag_mut().fill(false);
            }
            let proj = Projection::new(
                name,
                source,
                target,
                port,
                (n_post, n_pre),
                mask,
                spec.connectivity.is_sparse(),
                spec.delayed,
            );
            let dense: Array2<F> = spec.init.draw(n_post, n_pre, &mut rng);
            weights.push(proj.values_of(&dense));
            projections.push(proj);
        }
        let sources = if output.is_some() {
            Vec::new()
        } else if readout.sources.is_empty() {
            vec![self.populations.len() - 1]
        } else {
            readout
                .sources
                .iter()
                .map(|s| find(s, "readout source"))
                .collect::<Result<Vec<_>>>()?
        };
        let fan_in: usize = sources.iter().map(|&s| self.populations[s].0.size).sum();
        let all: Array2<F> = if output.is_some() {
            Array2::zeros((readout.size, 0))
        } else {
            readout.init.draw(readout.size, fan_in, &mut rng)
        };
        let mut readout_w = Vec::new();
        let mut col = 0;
        for &s in &sources {
            let n = self.populations[s].0.size;
            readout_w.push(all.slice(ndarray::s![.., col..col + n]).to_owned());
            col += n;
        }
        let params = Parameters {
            learnable: self.populations.iter().map(|(p, _)| p.learnable_start()).collect(),
            bias: (self.populations.iter())
                .map(|(p, bias)| bias.then(|| Array2::zeros((p.num_ports(), p.size))))
                .collect(),
            projections: weights,
            readout_w,
            readout_b: readout.bias.then(|| Array1::zeros(readout.size)),
        };
        let net = Network {
            n_in: self.n_in,
            populations: self.populations.into_iter().map(|(p, _)| p).collect(),
            projections,
            readout: Readout {
                size: readout.size,
                sources,
                kappa: F::from_f64(readout.kappa),
                gain: F::from_f64(match readout.gain {
                    ReadoutGain::One => 1.0,
                    ReadoutGain::OneMinusKappa => 1.0 - readout.kappa,
                }),
                population: output,
            },
            params,
        };
        net.validate()?;
        Ok(net)
    }
}

/// Rejects a model larger than the kernels' stack buffers.
fn check_model<M: NeuronModel>() -> Result<()> {
    if M::NUM_STATES > MAX_STATES
        || M::NUM_INPUTS > MAX_PORTS
        || M::NUM_LEARNABLE > MAX_STATES
        || M::NUM_DYNAMIC > MAX_DYNAMIC
    {
        return Err(invalid(
            "model",
            M::PATTERN.model,
            &format!(
                "at most {MAX_STATES} states, {MAX_PORTS} input ports, {MAX_STATES} learnable parameters and \
                 {MAX_DYNAMIC} dynamic partials"
            ),
        ));
    }
    Ok(())
}
