//! Spike nonlinearities and their surrogate (pseudo-)derivatives.
//!
//! `spike(x)` in a model is the Heaviside step `H(x) = 1 if x > 0 else 0`. Its derivative is
//! replaced by the surrogate chosen in the model. Each surrogate also has a *smooth
//! counterpart* `S(x) = ∫_{-∞}^x ψ(s) ds`, whose exact derivative is the surrogate: running a
//! model with [`Smooth`] instead of [`Plain`] gives a differentiable function whose finite
//! differences check the generated partials.

use crate::real::Real;

/// A surrogate derivative for the Heaviside spike, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Surrogate<T> {
    /// Piecewise linear (Bellec et al. 2020): `height · max(0, 1 − |x| / width)`.
    Triangle {
        /// Peak value at `x = 0` (Bellec: `γ / v_th`).
        height: T,
        /// Half-width of the support (Bellec: `v_th`).
        width: T,
    },
    /// Fast sigmoid (SuperSpike, Zenke & Ganguli 2018): `1 / (1 + slope·|x|)²`.
    FastSigmoid {
        /// Steepness `β`.
        slope: T,
    },
    /// Derivative of a logistic sigmoid: `slope · σ(slope·x) · (1 − σ(slope·x))`.
    Sigmoid {
        /// Steepness `β`.
        slope: T,
    },
    /// Arc tangent (Fang et al. 2021): `(α/2) / (1 + (π α x / 2)²)`.
    Arctan {
        /// Steepness `α`.
        alpha: T,
    },
    /// Gaussian density: `exp(−x² / (2σ²)) / (σ √(2π))`.
    Gaussian {
        /// Standard deviation `σ`.
        sigma: T,
    },
    /// Exponential (Shrestha & Orchard 2018): `height · exp(−slope · |x|)`.
    Exponential {
        /// Peak value at `x = 0`.
        height: T,
        /// Decay rate `β`.
        slope: T,
    },
}

impl<T: Real> Surrogate<T> {
    /// The pseudo-derivative `ψ(x)` used in place of `H'(x)`.
    #[inline(always)]
    pub fn grad(self, x: T) -> T {
        let one = T::one();
        match self {
            Surrogate::Triangle { height, width } => height * (one - x.abs() / width).max(T::zero()),
            Surrogate::FastSigmoid { slope } => {
                let d = one + slope * x.abs();
                one / (d * d)
            }
            Surrogate::Sigmoid { slope } => {
                let s = (slope * x).sigmoid();
                slope * s * (one - s)
            }
            Surrogate::Arctan { alpha } => {
                let u = T::from_f64(std::f64::consts::FRAC_PI_2) * alpha * x;
                alpha * T::from_f64(0.5) / (one + u * u)
            }
            Surrogate::Gaussian { sigma } => {
                let u = x / sigma;
                (T::from_f64(-0.5) * u * u).exp() / (sigma * T::from_f64((2.0 * std::f64::consts::PI).sqrt()))
            }
            Surrogate::Exponential { height, slope } => height * (-(slope * x.abs())).exp(),
        }
    }

    /// The smooth counterpart `S(x) = ∫_{-∞}^x ψ`, a differentiable stand-in for `H(x)`.
    pub fn smooth(self, x: T) -> T {
        let one = T::one();
        let zero = T::zero();
        let half = T::from_f64(0.5);
        let two = T::from_f64(2.0);
        match self {
            Surrogate::Triangle { height, width } => {
                if x <= -width {
                    zero
                } else if x <= zero {
                    let u = x + width;
                    height * u * u / (two * width)
                } else if x < width {
                    height * (half * width + x - x * x / (two * width))
                } else {
                    height * width
                }
            }
            Surrogate::FastSigmoid { slope } => {
                if x < zero {
                    one / (slope * (one - slope * x))
                } else {
                    (two - one / (one + slope * x)) / slope
                }
            }
            Surrogate::Sigmoid { slope } => (slope * x).sigmoid(),
            Surrogate::Arctan { alpha } => {
                (T::from_f64(std::f64::consts::FRAC_PI_2) * alpha * x).atan() / T::from_f64(std::f64::consts::PI) + half
            }
            Surrogate::Gaussian { sigma } => half * (one + (x / (sigma * T::from_f64(std::f64::consts::SQRT_2))).erf()),
            Surrogate::Exponential { height, slope } => {
                if x < zero {
                    height / slope * (slope * x).exp()
                } else {
                    height / slope * (two - (-(slope * x)).exp())
                }
            }
        }
    }
}

/// How the non-differentiable operations of a model are evaluated.
///
/// The generated code calls the mode for every `spike(..)` and `detach(..)` in evaluation
/// order, so a mode can also record or replay values (the finite-difference tests freeze
/// detached subexpressions that way).
pub trait Mode<T: Real> {
    /// The value of `spike(x)`.
    fn spike(&mut self, x: T, surrogate: Surrogate<T>) -> T;
    /// The value of `spike(x)` in a model declared `#[neuron_model(spike_at_zero)]`, where
    /// the step is 1 at `x = 0`. The default is [`Mode::spike`], right for modes that
    /// evaluate a continuous function; a mode evaluating the step overrides it.
    #[inline(always)]
    fn spike_at_zero(&mut self, x: T, surrogate: Surrogate<T>) -> T {
        self.spike(x, surrogate)
    }
    /// The value of `detach(x)`; its derivative is zero whatever this returns.
    #[inline(always)]
    fn detach(&mut self, x: T) -> T {
        x
    }
}

/// The model as written: `spike` is the Heaviside step. What training uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl<T: Real> Mode<T> for Plain {
    #[inline(always)]
    fn spike(&mut self, x: T, _surrogate: Surrogate<T>) -> T {
        if x > T::zero() { T::one() } else { T::zero() }
    }
    #[inline(always)]
    fn spike_at_zero(&mut self, x: T, _surrogate: Surrogate<T>) -> T {
        if x >= T::zero() { T::one() } else { T::zero() }
    }
}

/// `spike` replaced by its smooth counterpart [`Surrogate::smooth`], so that the generated
/// partials are the exact derivatives of the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Smooth;

impl<T: Real> Mode<T> for Smooth {
    #[inline(always)]
    fn spike(&mut self, x: T, surrogate: Surrogate<T>) -> T {
        surrogate.smooth(x)
    }
}
