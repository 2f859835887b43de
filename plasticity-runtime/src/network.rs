//! Networks: input → layers of one neuron model → leaky readout.

use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut1, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::error::{Error, Result, check_finite, check_shape, invalid};
use crate::init::Init;
use crate::linalg::{gemm_nn, gemm_nt, transpose_into};
use crate::model::NeuronModel;
use crate::real::{Float, Real};
use crate::surrogate::Plain;

/// Most state variables a model may have (kernels keep one neuron's state on the stack).
pub const MAX_STATES: usize = 16;
/// Most input ports a model may have.
pub const MAX_PORTS: usize = 8;
/// Most dynamic partials a model may have (one neuron's are gathered on the stack).
pub const MAX_DYNAMIC: usize = 256;

/// How one layer is built.
#[derive(Clone, Debug)]
pub struct LayerSpec<M> {
    /// The neuron model and its parameter values (learnable ones are the starting values).
    pub model: M,
    /// Number of neurons.
    pub size: usize,
    /// Recurrent weights `W^rec` (from this layer's spikes at the previous step).
    pub recurrent: bool,
    /// Keep self-connections of `W^rec` at zero.
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

/// How the readout is built: `y^t = κ y^{t-1} + W^out z^t + b`.
#[derive(Clone, Debug)]
pub struct ReadoutSpec {
    /// Number of outputs (classes or regression targets).
    pub size: usize,
    /// Leak `κ ∈ [0, 1)`; 0 is a memoryless readout.
    pub kappa: f64,
    /// With a bias `b`.
    pub bias: bool,
    /// Initialisation of `W^out`.
    pub init: Init,
}

impl ReadoutSpec {
    /// `size` outputs, leak `kappa`, with bias.
    pub fn new(size: usize, kappa: f64) -> Self {
        ReadoutSpec {
            size,
            kappa,
            bias: true,
            init: Init::default(),
        }
    }
}

/// One layer's trainable tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer<M, F> {
    /// The model (fixed parameters; learnable ones live in `learn`).
    pub model: M,
    /// Input weights per port, `[size, n_pre]`.
    pub w_in: Vec<Array2<F>>,
    /// Recurrent weights per port, `[size, size]`.
    pub w_rec: Option<Vec<Array2<F>>>,
    /// Bias per port, `[size]`.
    pub bias: Option<Vec<Array1<F>>>,
    /// Learnable parameters per neuron, `[q, size]` (one row per parameter).
    pub learn: Array2<F>,
    /// Whether self-connections are kept at zero.
    pub mask_self: bool,
    pub(crate) consts: Vec<F>,
}

impl<M: NeuronModel, F: Float> Layer<M, F> {
    /// Number of neurons.
    pub fn size(&self) -> usize {
        self.w_in.first().map_or(0, |w| w.nrows())
    }
    /// Number of presynaptic inputs.
    pub fn n_pre(&self) -> usize {
        self.w_in[0].ncols()
    }

    /// Recomputes the constant partials (after the model's fixed parameters change).
    pub fn refresh_constants(&mut self) {
        self.model.constants(&mut self.consts);
    }

    /// Sets recurrent self-connections to zero when masked.
    pub(crate) fn apply_mask(&mut self) {
        if let (true, Some(w)) = (self.mask_self, self.w_rec.as_mut()) {
            for m in w {
                m.diag_mut().fill(<F as Real>::zero());
            }
        }
    }
}

/// The leaky readout.
#[derive(Clone, Debug, PartialEq)]
pub struct Readout<F> {
    /// `W^out`, `[n_out, n_last]`.
    pub w: Array2<F>,
    /// Bias, `[n_out]`.
    pub b: Option<Array1<F>>,
    /// Leak κ.
    pub kappa: F,
}

/// Input → layers → leaky readout, all layers of model `M`, computing in `F`.
#[derive(Clone, Debug, PartialEq)]
pub struct Network<M, F> {
    /// Number of input channels.
    pub n_in: usize,
    /// The layers, input side first.
    pub layers: Vec<Layer<M, F>>,
    /// The readout, reading the last layer's spikes.
    pub readout: Readout<F>,
}

/// Builds a [`Network`].
#[derive(Clone, Debug)]
pub struct NetworkBuilder<M> {
    n_in: usize,
    layers: Vec<LayerSpec<M>>,
    readout: Option<ReadoutSpec>,
    seed: u64,
}

impl<M: NeuronModel> NetworkBuilder<M> {
    /// A network with `n_in` input channels.
    pub fn new(n_in: usize) -> Self {
        NetworkBuilder {
            n_in,
            layers: Vec::new(),
            readout: None,
            seed: 0,
        }
    }
    /// Appends a layer.
    pub fn layer(mut self, spec: LayerSpec<M>) -> Self {
        self.layers.push(spec);
        self
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

    /// Draws the weights and builds the network.
    pub fn build<F: Float>(self) -> Result<Network<M, F>> {
        if self.n_in == 0 {
            return Err(invalid("n_in", 0, "at least 1 input channel"));
        }
        if self.layers.is_empty() {
            return Err(invalid("layers", 0, "at least one layer"));
        }
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
        let readout = self
            .readout
            .ok_or_else(|| invalid("readout", "none", "a readout (NetworkBuilder::readout)"))?;
        if readout.size == 0 {
            return Err(invalid("readout size", 0, "at least 1 output"));
        }
        if !(0.0..1.0).contains(&readout.kappa) {
            return Err(invalid("readout kappa", readout.kappa, "κ in [0, 1)"));
        }
        readout.init.validate("readout")?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut layers = Vec::new();
        let mut n_pre = self.n_in;
        for (l, spec) in self.layers.into_iter().enumerate() {
            if spec.size == 0 {
                return Err(invalid(&format!("layer {l} size"), 0, "at least 1 neuron"));
            }
            spec.init_in.validate("input")?;
            spec.init_rec.validate("recurrent")?;
            let p = M::NUM_INPUTS;
            let w_in = (0..p).map(|_| spec.init_in.draw(spec.size, n_pre, &mut rng)).collect();
            let w_rec = spec.recurrent.then(|| {
                (0..p)
                    .map(|_| spec.init_rec.draw(spec.size, spec.size, &mut rng))
                    .collect()
            });
            let bias = spec.bias.then(|| (0..p).map(|_| Array1::zeros(spec.size)).collect());
            let mut init = vec![<F as Real>::zero(); M::NUM_LEARNABLE];
            spec.model.learnable_init(&mut init);
            let learn = Array2::from_shape_fn((M::NUM_LEARNABLE, spec.size), |(q, _)| init[q]);
            let mut consts = vec![<F as Real>::zero(); M::NUM_CONSTS];
            spec.model.constants(&mut consts);
            check_finite("model constant partials", consts.iter().copied())?;
            let mut layer = Layer {
                model: spec.model,
                w_in,
                w_rec,
                bias,
                learn,
                mask_self: spec.mask_self,
                consts,
            };
            layer.apply_mask();
            n_pre = spec.size;
            layers.push(layer);
        }
        let w = readout.init.draw(readout.size, n_pre, &mut rng);
        let b = readout.bias.then(|| Array1::zeros(readout.size));
        Ok(Network {
            n_in: self.n_in,
            layers,
            readout: Readout {
                w,
                b,
                kappa: F::from_f64(readout.kappa),
            },
        })
    }
}

/// What [`Network::run`] returns.
#[derive(Clone, Debug)]
pub struct RunOutput<F> {
    /// Readout `y`, `[T, B, n_out]`.
    pub readout: Array3<F>,
    /// Spikes (outputs `z`) of each layer, `[T, B, size]`.
    pub spikes: Vec<Array3<F>>,
}

/// Per-layer buffers for stepping a batch through time. Allocated once.
#[derive(Clone, Debug)]
pub(crate) struct LayerBuffers<F> {
    /// State, `[B, k, n]`.
    pub state: Vec<F>,
    /// Output at this step, `[B, n]`.
    pub z: Array2<F>,
    /// Output at the previous step, `[B, n]`.
    pub z_prev: Array2<F>,
    /// Synaptic currents, `[B, p, n]`.
    pub current: Array3<F>,
    /// Dynamic partials at this step, `[B, ND, n]` (each sample's block padded to at least 1).
    pub dynv: Vec<F>,
    /// Transposed copies of the input weights, `[n_pre, n]` per port: the current of an
    /// active input is then one contiguous row, and inactive inputs cost nothing.
    pub w_in_t: Vec<Array2<F>>,
    /// Transposed recurrent weights, `[n, n]` per port.
    pub w_rec_t: Vec<Array2<F>>,
}

impl<F: Float> LayerBuffers<F> {
    /// Copies the layer's current weights into the transposed caches. Call whenever the
    /// weights may have changed (a new sequence, an optimiser update).
    pub fn refresh_weights<M: NeuronModel>(&mut self, layer: &Layer<M, F>) {
        for (t, w) in self.w_in_t.iter_mut().zip(&layer.w_in) {
            transpose_into(&mut t.view_mut(), &w.view());
        }
        for (t, w) in self.w_rec_t.iter_mut().zip(layer.w_rec.iter().flatten()) {
            transpose_into(&mut t.view_mut(), &w.view());
        }
    }
}

impl<M: NeuronModel, F: Float> Network<M, F> {
    /// Size of the last layer.
    pub fn last_size(&self) -> usize {
        self.layers.last().map_or(0, |l| l.size())
    }
    /// Number of readout outputs.
    pub fn n_out(&self) -> usize {
        self.readout.w.nrows()
    }

    pub(crate) fn buffers(&self, batch: usize) -> Vec<LayerBuffers<F>> {
        self.layers
            .iter()
            .map(|l| {
                let n = l.size();
                let mut buf = LayerBuffers {
                    state: vec![<F as Real>::zero(); batch * n * M::NUM_STATES],
                    z: Array2::zeros((batch, n)),
                    z_prev: Array2::zeros((batch, n)),
                    current: Array3::zeros((batch, M::NUM_INPUTS, n)),
                    dynv: vec![<F as Real>::zero(); batch * (n * M::NUM_DYNAMIC).max(1)],
                    w_in_t: l.w_in.iter().map(|w| Array2::zeros((w.ncols(), w.nrows()))).collect(),
                    w_rec_t: l
                        .w_rec
                        .iter()
                        .flatten()
                        .map(|w| Array2::zeros((w.ncols(), w.nrows())))
                        .collect(),
                };
                buf.refresh_weights(l);
                reset_state(l, &mut buf);
                buf
            })
            .collect()
    }

    /// Checks that every tensor has the shape the network's sizes imply, standard (row-major)
    /// layout and finite values: what a network assembled or edited by hand must satisfy.
    pub fn validate(&self) -> Result<()> {
        let p = M::NUM_INPUTS;
        let mut n_pre = self.n_in;
        for (l, layer) in self.layers.iter().enumerate() {
            let n = layer.size();
            if n == 0 {
                return Err(invalid(&format!("layer {l} size"), 0, "at least 1 neuron"));
            }
            check_shape(
                &format!("layer {l} learnable parameters"),
                layer.learn.shape(),
                &[M::NUM_LEARNABLE, n],
            )?;
            let standard = |what: String, ok: bool| -> Result<()> {
                if ok {
                    Ok(())
                } else {
                    Err(invalid(
                        &what,
                        "a non-contiguous array",
                        "a standard-layout (row-major) array",
                    ))
                }
            };
            // One matrix per port, each `[n, cols]`, finite, row-major.
            let check_weights = |what: &str, name: &str, ws: &[Array2<F>], cols: usize| -> Result<()> {
                if ws.len() != p {
                    return Err(invalid(
                        &format!("layer {l} {what}"),
                        ws.len(),
                        &format!("one matrix per input port ({p})"),
                    ));
                }
                for (port, w) in ws.iter().enumerate() {
                    check_matrix(&format!("layer {l} {name}[{port}]"), &w.view(), n, cols)?;
                    standard(format!("layer {l} {name}[{port}]"), w.is_standard_layout())?;
                }
                Ok(())
            };
            check_weights("input weights", "W_in", &layer.w_in, n_pre)?;
            if let Some(w_rec) = &layer.w_rec {
                check_weights("recurrent weights", "W_rec", w_rec, n)?;
            }
            if let Some(bias) = &layer.bias {
                if bias.len() != p {
                    return Err(invalid(
                        &format!("layer {l} biases"),
                        bias.len(),
                        &format!("one vector per input port ({p})"),
                    ));
                }
                for (port, b) in bias.iter().enumerate() {
                    check_shape(&format!("layer {l} bias[{port}]"), b.shape(), &[n])?;
                    check_finite(&format!("layer {l} bias[{port}]"), b.iter().copied())?;
                }
            }
            check_finite(&format!("layer {l} learnable parameters"), layer.learn.iter().copied())?;
            standard(
                format!("layer {l} learnable parameters"),
                layer.learn.is_standard_layout(),
            )?;
            if layer.consts.len() != M::NUM_CONSTS {
                return Err(invalid(
                    &format!("layer {l} constants"),
                    layer.consts.len(),
                    "the model's constant count",
                ));
            }
            n_pre = n;
        }
        check_matrix("readout W_out", &self.readout.w.view(), self.readout.w.nrows(), n_pre)?;
        standard_readout(&self.readout)?;
        if let Some(b) = &self.readout.b {
            check_shape("readout bias", b.shape(), &[self.readout.w.nrows()])?;
            check_finite("readout bias", b.iter().copied())?;
        }
        let kappa = self.readout.kappa.to_f64();
        if !(0.0..1.0).contains(&kappa) {
            return Err(invalid("readout kappa", kappa, "κ in [0, 1)"));
        }
        Ok(())
    }

    /// Checks an input sequence `[T, B, n_in]`.
    pub(crate) fn check_inputs(&self, x: &ArrayView3<F>) -> Result<()> {
        let s = x.shape();
        if s[2] != self.n_in || s[1] == 0 {
            return Err(Error::Shape {
                what: "inputs".into(),
                expected: format!("[T, B >= 1, {}]", self.n_in),
                found: s.to_vec(),
            });
        }
        check_finite("inputs", x.iter().copied())
    }

    /// Runs the network on inputs `[T, B, n_in]` from its initial state (inference only).
    pub fn run(&self, inputs: ArrayView3<F>) -> Result<RunOutput<F>> {
        self.validate()?;
        self.check_inputs(&inputs)?;
        let inputs = inputs.as_standard_layout();
        let inputs = inputs.view();
        let (t_len, batch) = (inputs.shape()[0], inputs.shape()[1]);
        let mut bufs = self.buffers(batch);
        let mut y = Array2::<F>::zeros((batch, self.n_out()));
        let mut readout = Array3::zeros((t_len, batch, self.n_out()));
        let mut spikes: Vec<Array3<F>> = self
            .layers
            .iter()
            .map(|l| Array3::zeros((t_len, batch, l.size())))
            .collect();
        for t in 0..t_len {
            self.step_forward(inputs.index_axis(Axis(0), t), &mut bufs, false);
            self.readout_step(&bufs.last().expect("a layer").z.view(), &mut y);
            readout.index_axis_mut(Axis(0), t).assign(&y);
            for (l, b) in bufs.iter().enumerate() {
                spikes[l].index_axis_mut(Axis(0), t).assign(&b.z);
            }
        }
        Ok(RunOutput { readout, spikes })
    }

    /// One time step of every layer: `z_prev ← z`, then new currents, states and outputs
    /// (and dynamic partials when `partials`).
    pub(crate) fn step_forward(&self, x: ArrayView2<F>, bufs: &mut [LayerBuffers<F>], partials: bool) {
        self.step_layers(x, bufs, partials, None);
    }

    /// [`Network::step_forward`] with partials that writes each layer's dynamic partials and
    /// outputs straight into the slots `rec` gives (BPTT's tape), from the same parallel pass.
    pub(crate) fn step_forward_recorded(
        &self,
        x: ArrayView2<F>,
        bufs: &mut [LayerBuffers<F>],
        rec: &mut dyn Recorder<F>,
    ) {
        self.step_layers(x, bufs, true, Some(rec));
    }

    fn step_layers(
        &self,
        x: ArrayView2<F>,
        bufs: &mut [LayerBuffers<F>],
        partials: bool,
        mut rec: Option<&mut dyn Recorder<F>>,
    ) {
        for l in 0..self.layers.len() {
            let (before, rest) = bufs.split_at_mut(l);
            let buf = &mut rest[0];
            std::mem::swap(&mut buf.z, &mut buf.z_prev);
            let pre = if l == 0 { x } else { before[l - 1].z.view() };
            layer_step(&self.layers[l], pre, buf, partials, rec.as_mut().map(|r| r.slots(l)));
        }
    }

    /// `y ← κ y + W^out z + b`.
    pub(crate) fn readout_step(&self, z: &ArrayView2<F>, y: &mut Array2<F>) {
        let r = &self.readout;
        gemm_nt(r.kappa, &mut y.view_mut(), z, &r.w.view());
        if let Some(b) = &r.b {
            *y += b;
        }
    }
}

/// Puts every neuron of `buf` in the model's initial state, with zero outputs.
pub(crate) fn reset_state<M: NeuronModel, F: Float>(layer: &Layer<M, F>, buf: &mut LayerBuffers<F>) {
    let (k, n) = (M::NUM_STATES, layer.size());
    let mut init = [<F as Real>::zero(); MAX_STATES];
    layer.model.initial_state(&mut init[..k]);
    for sample in buf.state.chunks_exact_mut(k * n) {
        for (row, &v) in sample.chunks_exact_mut(n).zip(&init[..k]) {
            row.fill(v);
        }
    }
    buf.z.fill(<F as Real>::zero());
    buf.z_prev.fill(<F as Real>::zero());
}

/// Where a recorded forward step writes what it keeps.
pub(crate) trait Recorder<F> {
    /// For layer `l`: the slots for this step's dynamic partials (`[B·max(n·ND, 1)]`, laid
    /// out like [`LayerBuffers::dynv`]) and outputs (`[B·n]`).
    fn slots(&mut self, l: usize) -> (&mut [F], &mut [F]);
}

/// One sample's state, outputs, partials and currents in [`layer_step`].
type Sample<'a, F> = (((&'a mut [F], ArrayViewMut1<'a, F>), &'a mut [F]), ArrayView2<'a, F>);

/// Currents and the neuron update of one layer for one step. With `record`, the partials
/// go to its first slot instead of `buf.dynv` and the outputs are copied to its second.
fn layer_step<M: NeuronModel, F: Float>(
    layer: &Layer<M, F>,
    pre: ArrayView2<F>,
    buf: &mut LayerBuffers<F>,
    partials: bool,
    record: Option<(&mut [F], &mut [F])>,
) {
    let (k, p, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_DYNAMIC);
    let n = layer.size();
    for port in 0..p {
        let mut cur = buf.current.index_axis_mut(Axis(1), port);
        gemm_nn(<F as Real>::zero(), &mut cur, &pre, &buf.w_in_t[port].view());
        if let Some(w_rec_t) = buf.w_rec_t.get(port) {
            gemm_nn(<F as Real>::one(), &mut cur, &buf.z_prev.view(), &w_rec_t.view());
        }
        if let Some(bias) = &layer.bias {
            cur += &bias[port];
        }
    }
    let learn = layer.learn.as_slice().expect("validated standard layout");
    let model = &layer.model;
    let dstride = (n * nd).max(1);
    let (dynv_out, z_out) = match record {
        Some((d, z)) => (d, Some(z)),
        None => (&mut buf.dynv[..], None),
    };
    let samples = buf
        .state
        .par_chunks_mut(n * k)
        .zip(buf.z.axis_iter_mut(Axis(0)).into_par_iter())
        .zip(dynv_out.par_chunks_mut(dstride))
        .zip(buf.current.axis_iter(Axis(0)).into_par_iter());
    let step = |(((state, mut z), dynv), current): Sample<'_, F>, z_copy: Option<&mut [F]>| {
        let input = current.to_slice().expect("currents are allocated in standard layout");
        let z = z.as_slice_mut().expect("outputs are allocated in standard layout");
        let dynv = if partials { &mut dynv[..n * nd] } else { &mut [] };
        model.eval_layer(learn, state, input, z, dynv, &mut Plain);
        if let Some(dst) = z_copy {
            dst.copy_from_slice(z);
        }
    };
    match z_out {
        Some(z_out) => samples
            .zip(z_out.par_chunks_mut(n.max(1)))
            .for_each(|(sample, dst)| step(sample, Some(dst))),
        None => samples.for_each(|sample| step(sample, None)),
    }
}

/// The dynamic partials of neuron `j` of one sample (`[ND, n]` block) gathered into `out`.
#[inline]
pub(crate) fn gather_partials<F: Float>(block: &[F], j: usize, n: usize, out: &mut [F]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = block[r * n + j];
    }
}

fn standard_readout<F: Float>(r: &Readout<F>) -> Result<()> {
    if r.w.is_standard_layout() {
        Ok(())
    } else {
        Err(invalid(
            "readout W_out",
            "a non-contiguous array",
            "a standard-layout (row-major) array",
        ))
    }
}

/// Checks a `[rows, cols]` array.
pub(crate) fn check_matrix<F: Float>(what: &str, a: &ArrayView2<F>, rows: usize, cols: usize) -> Result<()> {
    check_shape(what, a.shape(), &[rows, cols])?;
    check_finite(what, a.iter().copied())
}
