//! Reference derivatives of a compiled model: dual numbers and finite differences, both on
//! the model's smooth counterpart (every `spike` replaced by the integral of its surrogate),
//! with detached values and surrogate parameters frozen at the evaluation point, which is
//! exactly what the generated partials differentiate.

use plasticity_runtime::{Mode, NeuronModel, Real, Smooth, Surrogate};

use crate::dual::Dual;

fn freeze<T: Real>(s: Surrogate<T>) -> Surrogate<f64> {
    match s {
        Surrogate::Triangle { height, width } => Surrogate::Triangle {
            height: height.to_f64(),
            width: width.to_f64(),
        },
        Surrogate::FastSigmoid { slope } => Surrogate::FastSigmoid { slope: slope.to_f64() },
        Surrogate::Sigmoid { slope } => Surrogate::Sigmoid { slope: slope.to_f64() },
        Surrogate::Arctan { alpha } => Surrogate::Arctan { alpha: alpha.to_f64() },
        Surrogate::Gaussian { sigma } => Surrogate::Gaussian { sigma: sigma.to_f64() },
        Surrogate::Exponential { height, slope } => Surrogate::Exponential {
            height: height.to_f64(),
            slope: slope.to_f64(),
        },
    }
}

fn lift(s: Surrogate<f64>) -> Surrogate<Dual> {
    let c = Dual::from_f64;
    match s {
        Surrogate::Triangle { height, width } => Surrogate::Triangle {
            height: c(height),
            width: c(width),
        },
        Surrogate::FastSigmoid { slope } => Surrogate::FastSigmoid { slope: c(slope) },
        Surrogate::Sigmoid { slope } => Surrogate::Sigmoid { slope: c(slope) },
        Surrogate::Arctan { alpha } => Surrogate::Arctan { alpha: c(alpha) },
        Surrogate::Gaussian { sigma } => Surrogate::Gaussian { sigma: c(sigma) },
        Surrogate::Exponential { height, slope } => Surrogate::Exponential {
            height: c(height),
            slope: c(slope),
        },
    }
}

/// Smooth mode for dual numbers: `detach` drops the derivative, surrogate parameters are
/// constants.
pub struct DualSmooth;

impl Mode<Dual> for DualSmooth {
    fn spike(&mut self, x: Dual, s: Surrogate<Dual>) -> Dual {
        lift(freeze(s)).smooth(x)
    }
    fn detach(&mut self, x: Dual) -> Dual {
        Dual::from_f64(x.re)
    }
}

/// Records detached values and surrogate parameters at the base point.
#[derive(Default)]
pub struct Record {
    detached: Vec<f64>,
    surrogates: Vec<Surrogate<f64>>,
}

impl Mode<f64> for Record {
    fn spike(&mut self, x: f64, s: Surrogate<f64>) -> f64 {
        self.surrogates.push(s);
        s.smooth(x)
    }
    fn detach(&mut self, x: f64) -> f64 {
        self.detached.push(x);
        x
    }
}

/// Replays what [`Record`] saw: perturbations do not move detached values.
pub struct Replay<'a> {
    rec: &'a Record,
    d: usize,
    s: usize,
}

impl Mode<f64> for Replay<'_> {
    fn spike(&mut self, x: f64, _s: Surrogate<f64>) -> f64 {
        let s = self.rec.surrogates[self.s];
        self.s += 1;
        s.smooth(x)
    }
    fn detach(&mut self, _x: f64) -> f64 {
        let v = self.rec.detached[self.d];
        self.d += 1;
        v
    }
}

/// One evaluation point.
#[derive(Clone, Debug)]
pub struct Point {
    /// Learnable parameter values.
    pub learn: Vec<f64>,
    /// Previous state.
    pub state: Vec<f64>,
    /// Inputs.
    pub input: Vec<f64>,
}

/// The dense partials `[J | B | P]` stacked over rows `[h'_0..h'_{k-1}, z]`, columns
/// `[states, inputs, learnables]`: a `(k+1) × (k+p+q)` row-major matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Jacobian {
    /// Number of rows (`k + 1`).
    pub rows: usize,
    /// Number of columns (`k + p + q`).
    pub cols: usize,
    /// Values, row-major.
    pub values: Vec<f64>,
}

impl Jacobian {
    fn zeros(rows: usize, cols: usize) -> Self {
        Jacobian {
            rows,
            cols,
            values: vec![0.0; rows * cols],
        }
    }
    /// Entry `(r, c)`.
    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.values[r * self.cols + c]
    }
    fn set(&mut self, r: usize, c: usize, v: f64) {
        self.values[r * self.cols + c] = v;
    }
}

fn dims<M: NeuronModel>() -> (usize, usize, usize) {
    (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE)
}

/// The generated partials at `pt`, in smooth mode.
pub fn generated<M: NeuronModel>(m: &M, pt: &Point) -> Jacobian {
    let (k, p, q) = dims::<M>();
    let mut consts = vec![0.0; M::NUM_CONSTS];
    m.constants(&mut consts);
    let mut dynv = vec![0.0; M::NUM_DYNAMIC];
    let mut next = vec![0.0; k];
    m.eval_partials(&pt.learn, &pt.state, &pt.input, &mut next, &mut dynv, &mut Smooth);
    let (mut j, mut jz, mut b, mut bz, mut pp, mut pz) = (
        vec![0.0; k * k],
        vec![0.0; k],
        vec![0.0; k * p],
        vec![0.0; p],
        vec![0.0; k * q],
        vec![0.0; q],
    );
    M::dense_partials(&consts, &dynv, &mut j, &mut jz, &mut b, &mut bz, &mut pp, &mut pz);
    let mut out = Jacobian::zeros(k + 1, k + p + q);
    for r in 0..=k {
        for c in 0..k {
            out.set(r, c, if r < k { j[r * k + c] } else { jz[c] });
        }
        for c in 0..p {
            out.set(r, k + c, if r < k { b[r * p + c] } else { bz[c] });
        }
        for c in 0..q {
            out.set(r, k + p + c, if r < k { pp[r * q + c] } else { pz[c] });
        }
    }
    out
}

/// The same partials by forward-mode dual numbers, one direction per column.
pub fn dual<M: NeuronModel>(m: &M, pt: &Point) -> Jacobian {
    let (k, p, q) = dims::<M>();
    let mut out = Jacobian::zeros(k + 1, k + p + q);
    for col in 0..k + p + q {
        let seed = |base: usize, xs: &[f64]| -> Vec<Dual> {
            xs.iter()
                .enumerate()
                .map(|(i, &x)| Dual::new(x, if base + i == col { 1.0 } else { 0.0 }))
                .collect()
        };
        let state = seed(0, &pt.state);
        let input = seed(k, &pt.input);
        let learn = seed(k + p, &pt.learn);
        let mut next = vec![Dual::default(); k];
        let z = m.eval(&learn, &state, &input, &mut next, &mut DualSmooth);
        for (r, v) in next.iter().enumerate() {
            out.set(r, col, v.eps);
        }
        out.set(k, col, z.eps);
    }
    out
}

/// Finite differences (fourth-order central stencil) of the smooth model with frozen
/// detached values. Returns `None` for a column where two step sizes disagree, i.e. a
/// kink of a piecewise function lies within the stencil.
pub fn finite_differences<M: NeuronModel>(m: &M, pt: &Point) -> Vec<Option<Vec<f64>>> {
    let (k, p, q) = dims::<M>();
    let mut rec = Record::default();
    let mut base_next = vec![0.0; k];
    m.eval(&pt.learn, &pt.state, &pt.input, &mut base_next, &mut rec);
    let eval = |x: &[f64]| -> Vec<f64> {
        let (state, rest) = x.split_at(k);
        let (input, learn) = rest.split_at(p);
        let mut next = vec![0.0; k];
        let mut replay = Replay { rec: &rec, d: 0, s: 0 };
        let z = m.eval(learn, state, input, &mut next, &mut replay);
        next.push(z);
        next
    };
    let x0: Vec<f64> = pt.state.iter().chain(&pt.input).chain(&pt.learn).copied().collect();
    let stencil = |col: usize, h: f64| -> Vec<f64> {
        let at = |s: f64| {
            let mut x = x0.clone();
            x[col] += s * h;
            eval(&x)
        };
        let (m2, m1, p1, p2) = (at(-2.0), at(-1.0), at(1.0), at(2.0));
        (0..=k)
            .map(|r| (m2[r] - 8.0 * m1[r] + 8.0 * p1[r] - p2[r]) / (12.0 * h))
            .collect()
    };
    (0..k + p + q)
        .map(|col| {
            let h = 1e-4 * x0[col].abs().max(1.0);
            let a = stencil(col, h);
            let b = stencil(col, h / 2.0);
            let smooth = a
                .iter()
                .zip(&b)
                .all(|(x, y)| (x - y).abs() <= 1e-8 * x.abs().max(y.abs()).max(1.0));
            smooth.then_some(b)
        })
        .collect()
}

/// `|a − b| / max(|a|, |b|, 1)`: relative error, absolute near zero.
pub fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1.0)
}
