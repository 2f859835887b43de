//! The interface every `#[neuron_model]` implements, and the sparsity metadata it exposes.
//!
//! The runtime never differentiates a model: it calls these generated kernels. Slices are
//! laid out as follows (k = number of state variables, p = input ports, q = learnable
//! parameters):
//!
//! * `state`, `next`: `[k]`; `input`: `[p]`; `learn`: `[q]` (this neuron's learnable values).
//! * `consts`: `[NUM_CONSTS]`, from [`NeuronModel::constants`], once per layer.
//! * `dynv`: `[NUM_DYNAMIC]`, from [`NeuronModel::eval_partials`], per neuron and step.

use std::fmt;

use crate::real::Real;
use crate::surrogate::Mode;

/// Which partial-derivative matrix an entry belongs to (notation of the reference note).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Matrix {
    /// `J = ∂h^t/∂h^{t-1}` (k × k).
    J,
    /// `Jz = ∂z^t/∂h^{t-1}` (1 × k).
    Jz,
    /// `B = ∂h^t/∂I^t` (k × ports).
    B,
    /// `Bz = ∂z^t/∂I^t` (1 × ports).
    Bz,
    /// `P = ∂h^t/∂θ` (k × learnable parameters).
    P,
    /// `Pz = ∂z^t/∂θ` (1 × learnable parameters).
    Pz,
}

/// How one partial derivative is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Depends only on fixed parameters: computed once, stored at this index of `consts`.
    Constant(usize),
    /// Depends on state, input or learnable parameters: computed per neuron and step,
    /// stored at this index of `dynv`.
    Dynamic(usize),
}

/// One structurally nonzero partial derivative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The matrix.
    pub matrix: Matrix,
    /// Row: a state index (`J`, `B`, `P`) or 0 (`Jz`, `Bz`, `Pz`).
    pub row: usize,
    /// Column: a state, port or learnable-parameter index.
    pub col: usize,
    /// Constant or dynamic, with its storage index.
    pub kind: EntryKind,
    /// The derivative as a formula, for documentation.
    pub formula: &'static str,
}

/// How the eligibility vector of one state variable is stored, for one input port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowLayout {
    /// The input cannot reach this state variable: no trace, no memory.
    Absent,
    /// Independent of the postsynaptic neuron: one value per presynaptic neuron, at this
    /// row of the factorised trace array.
    Factorised(usize),
    /// One value per synapse, at this row of the per-synapse trace array.
    PerSynapse(usize),
}

/// The eligibility layout the compiler chose for one input port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortLayout {
    /// The port's name.
    pub name: &'static str,
    /// Per state variable, how its eligibility is stored.
    pub rows: &'static [RowLayout],
    /// Number of factorised rows (values per presynaptic neuron).
    pub factorised: usize,
    /// Number of per-synapse rows (values per synapse).
    pub per_synapse: usize,
}

/// Everything the compiler found out about a model's derivatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pattern {
    /// Model name.
    pub model: &'static str,
    /// State variable names, in storage order.
    pub states: &'static [&'static str],
    /// Input port names.
    pub inputs: &'static [&'static str],
    /// Learnable parameter names.
    pub learnable: &'static [&'static str],
    /// Per learnable parameter, its declared range `(lo, hi)` (infinite where unbounded):
    /// values are kept inside it after every update, and a network holding a value outside
    /// it is rejected.
    pub learnable_ranges: &'static [(f64, f64)],
    /// Every structurally nonzero partial; absent pairs are structurally zero.
    pub entries: &'static [Entry],
    /// Per input port, the eligibility layout.
    pub ports: &'static [PortLayout],
    /// Length of the `consts` array.
    pub num_consts: usize,
    /// Length of the `dynv` array.
    pub num_dynamic: usize,
    /// Whether a learnable parameter appears in an initial value: each neuron's initial
    /// state then depends on its own parameter values, and gradients flow through it.
    pub learnable_init_state: bool,
    /// Declared `#[neuron_model(spike_at_zero)]`: `spike(0) = 1`, so the neuron fires on
    /// `x ≥ 0` (NEST's convention) instead of `x > 0`.
    pub spike_at_zero: bool,
}

impl Pattern {
    /// The entry at `(matrix, row, col)`, or `None` when it is structurally zero.
    pub fn entry(&self, matrix: Matrix, row: usize, col: usize) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.matrix == matrix && e.row == row && e.col == col)
    }

    /// A human-readable report of the pattern and trace layout: what `describe()` prints.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

fn cell(p: &Pattern, m: Matrix, row: usize, col: usize) -> &'static str {
    match p.entry(m, row, col).map(|e| e.kind) {
        None => "0",
        Some(EntryKind::Constant(_)) => "c",
        Some(EntryKind::Dynamic(_)) => "d",
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {}", self.model)?;
        writeln!(
            f,
            "  states: {:?}  inputs: {:?}  learnable: {:?}",
            self.states, self.inputs, self.learnable
        )?;
        writeln!(
            f,
            "  partials: {} constant (computed once), {} dynamic (per neuron and step)",
            self.num_consts, self.num_dynamic
        )?;
        if self.spike_at_zero {
            writeln!(f, "  spike(x) fires on x >= 0")?;
        }
        writeln!(f, "  legend: 0 structurally zero, c constant, d dynamic")?;
        let w = self.states.iter().map(|s| s.len()).max().unwrap_or(1).max(6);
        let header = |f: &mut fmt::Formatter<'_>, cols: &[&str]| -> fmt::Result {
            write!(f, "    {:w$} |", "")?;
            for c in cols {
                write!(f, " {c}")?;
            }
            writeln!(f)
        };
        let row = |f: &mut fmt::Formatter<'_>, label: &str, m: Matrix, r: usize, cols: &[&str]| {
            write!(f, "    {label:w$} |")?;
            for (c, name) in cols.iter().enumerate() {
                write!(f, " {:>n$}", cell(self, m, r, c), n = name.len())?;
            }
            writeln!(f)
        };
        let blocks: [(&str, &[&str], Matrix, Matrix); 3] = [
            ("J = dh'/dh, Jz = dz/dh", self.states, Matrix::J, Matrix::Jz),
            ("B = dh'/dI, Bz = dz/dI", self.inputs, Matrix::B, Matrix::Bz),
            ("P = dh'/dθ, Pz = dz/dθ", self.learnable, Matrix::P, Matrix::Pz),
        ];
        for (title, cols, m, mz) in blocks {
            if cols.is_empty() {
                continue;
            }
            writeln!(f, "  {title}")?;
            header(f, cols)?;
            for (r, s) in self.states.iter().enumerate() {
                row(f, s, m, r, cols)?;
            }
            row(f, "spike", mz, 0, cols)?;
        }
        writeln!(f, "  nonzero partials:")?;
        for e in self.entries {
            let state = |r: usize| self.states[r];
            let (num, den) = match e.matrix {
                Matrix::J => (format!("{}'", state(e.row)), self.states[e.col]),
                Matrix::Jz => ("z".to_string(), self.states[e.col]),
                Matrix::B => (format!("{}'", state(e.row)), self.inputs[e.col]),
                Matrix::Bz => ("z".to_string(), self.inputs[e.col]),
                Matrix::P => (format!("{}'", state(e.row)), self.learnable[e.col]),
                Matrix::Pz => ("z".to_string(), self.learnable[e.col]),
            };
            let kind = match e.kind {
                EntryKind::Constant(_) => "constant",
                EntryKind::Dynamic(_) => "dynamic",
            };
            let head = format!("    ∂{num}/∂{den} ({kind}) = ");
            write_wrapped(f, &head, e.formula)?;
        }
        writeln!(f, "  eligibility layout per input port:")?;
        for port in self.ports {
            write!(f, "    {}:", port.name)?;
            for (s, layout) in self.states.iter().zip(port.rows) {
                let l = match layout {
                    RowLayout::Absent => "absent",
                    RowLayout::Factorised(_) => "factorised (per presynaptic neuron)",
                    RowLayout::PerSynapse(_) => "per synapse",
                };
                write!(f, " ε^{s} {l};")?;
            }
            writeln!(
                f,
                " => {} value(s) per presynaptic neuron, {} per synapse",
                port.factorised, port.per_synapse
            )?;
        }
        Ok(())
    }
}

/// Writes `head` then `text`, broken at spaces into lines of at most [`WRAP`] characters,
/// continuation lines indented by eight spaces; a word longer than a line is kept whole.
fn write_wrapped(f: &mut fmt::Formatter<'_>, head: &str, text: &str) -> fmt::Result {
    const INDENT: &str = "        ";
    let mut line = head.to_string();
    let mut width = line.chars().count();
    let mut fresh = true;
    for word in text.split(' ') {
        let len = word.chars().count();
        if !fresh && width + 1 + len > WRAP {
            writeln!(f, "{line}")?;
            line = INDENT.to_string();
            width = INDENT.len();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
            width += 1;
        }
        line.push_str(word);
        width += len;
        fresh = false;
    }
    writeln!(f, "{line}")
}

/// Line width of [`Pattern::describe`].
const WRAP: usize = 96;

/// A neuron model compiled by `#[neuron_model]`.
///
/// Implemented by the macro only; every method is a generated, allocation-free kernel that
/// touches only the structurally nonzero partials. Slice layouts are given in the module
/// documentation. The runtime checks all slice lengths before calling these.
pub trait NeuronModel: Clone + fmt::Debug + Send + Sync + 'static {
    /// Number of state variables `k`.
    const NUM_STATES: usize;
    /// Number of input ports.
    const NUM_INPUTS: usize;
    /// Number of learnable (per-neuron, trainable) parameters.
    const NUM_LEARNABLE: usize;
    /// Length of the `consts` array.
    const NUM_CONSTS: usize;
    /// Length of the `dynv` array.
    const NUM_DYNAMIC: usize;
    /// The sparsity pattern and the chosen eligibility layout.
    const PATTERN: Pattern;

    /// A report of the sparsity pattern and trace layout.
    fn describe() -> String {
        Self::PATTERN.describe()
    }

    /// Writes the initial state of one neuron with learnable values `learn` (`[q]`) into
    /// `out` (`[k]`).
    fn initial_state<T: Real>(&self, learn: &[T], out: &mut [T]);

    /// Writes `∂s0_r/∂θ_q`, the derivatives of one neuron's initial state with respect to
    /// its learnable parameters, into `out` (`[q·k]`, parameter-major): BPTT's gradient
    /// through the initial state, and e-prop's initial parameter traces.
    fn initial_partials<T: Real>(&self, learn: &[T], out: &mut [T]);

    /// Writes the model's values of the learnable parameters into `out` (`[q]`): the
    /// per-neuron starting values of a layer.
    fn learnable_init<T: Real>(&self, out: &mut [T]);

    /// Sets the learnable parameters from `values` (`[q]`), e.g. to build a model variant.
    fn set_learnable(&mut self, values: &[f64]);

    /// One time step of one neuron: writes the next state, returns the output `z`.
    fn eval<T: Real, M: Mode<T>>(&self, learn: &[T], state: &[T], input: &[T], next: &mut [T], mode: &mut M) -> T;

    /// One time step of `n = z.len()` neurons stored as structure of arrays: `learn`
    /// `[q·n]` (parameter-major), `state` `[k·n]` (state-major, advanced in place), `input`
    /// `[p·n]` (port-major), outputs into `z` `[n]`. When `dynv` is non-empty (`[ND·n]`,
    /// partial-major) the dynamic partials are written too. Per-layer constants are computed
    /// once, before the loop over neurons.
    fn eval_layer<T: Real, M: Mode<T>>(
        &self,
        learn: &[T],
        state: &mut [T],
        input: &[T],
        z: &mut [T],
        dynv: &mut [T],
        mode: &mut M,
    );

    /// The constant partials (they depend only on fixed parameters), `[NUM_CONSTS]`.
    fn constants<T: Real>(&self, consts: &mut [T]);

    /// One time step and the dynamic partials at it (`dynv`, `[NUM_DYNAMIC]`).
    fn eval_partials<T: Real, M: Mode<T>>(
        &self,
        learn: &[T],
        state: &[T],
        input: &[T],
        next: &mut [T],
        dynv: &mut [T],
        mode: &mut M,
    ) -> T;

    /// Expands the partials into dense matrices (row-major): `j` `[k·k]`, `jz` `[k]`,
    /// `b` `[k·p]`, `bz` `[p]`, `p` `[k·q]`, `pz` `[q]`. Zero entries are written as zero.
    fn dense_partials<T: Real>(
        consts: &[T],
        dynv: &[T],
        j: &mut [T],
        jz: &mut [T],
        b: &mut [T],
        bz: &mut [T],
        p: &mut [T],
        pz: &mut [T],
    );

    /// The reverse step of BPTT for one neuron: given `dh = dE/dh^t` (`[k]`) and
    /// `dz = dE/dz^t`, writes `dh_prev = J^T dh + Jz^T dz` (`[k]`) and `d_input = B^T dh +
    /// Bz^T dz` (`[p]`), and adds `P^T dh + Pz^T dz` into `d_learn` (`[q]`).
    fn vjp<T: Real>(consts: &[T], dynv: &[T], dh: &[T], dz: T, dh_prev: &mut [T], d_input: &mut [T], d_learn: &mut [T]);

    /// e-prop for the synapses of one postsynaptic neuron on input port `port`, one step:
    /// with `pre` (`[n]`) the presynaptic activity, `fact` (`[F·n]`, this port's factorised
    /// traces *before* this step), `syn` (`[S·n]`, the per-synapse traces, updated in place
    /// by eq. 1), computes the eligibility trace `e` (eq. 2) of every synapse and adds
    /// `l · e` into `grad` (`[n]`). When `ebar` is non-empty (`[n]`) it holds the κ-filtered
    /// trace `ē ← κ ē + e`, and `l · ē` is added instead.
    fn synapse_traces<T: Real>(
        port: usize,
        consts: &[T],
        dynv: &[T],
        pre: &[T],
        fact: &[T],
        syn: &mut [T],
        ebar: &mut [T],
        grad: &mut [T],
        l: T,
        kappa: T,
    );

    /// Advances the factorised traces of port `port` (`fact`, `[F·n]`) by one step of eq. 1
    /// with presynaptic activity `pre` (`[n]`). Call after [`NeuronModel::synapse_traces`]
    /// for every neuron of the step, since those read the values before the step.
    fn factorised_traces<T: Real>(port: usize, consts: &[T], pre: &[T], fact: &mut [T]);

    /// e-prop for the learnable parameters of one neuron, one step: `eps` (`[q·k]`,
    /// parameter-major) follows eq. 1 with `P` as input, the trace `e = Jz ε + Pz` (`[q]`)
    /// is κ-filtered into `ebar` when non-empty, and `l · e` (or `l · ē`) is added into
    /// `grad` (`[q]`).
    fn param_traces<T: Real>(consts: &[T], dynv: &[T], eps: &mut [T], ebar: &mut [T], grad: &mut [T], l: T, kappa: T);
}
