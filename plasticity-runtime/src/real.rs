//! The scalar type the generated kernels compute with.
//!
//! Every kernel that `#[neuron_model]` emits is generic over [`Real`], so one model runs in
//! `f32` (speed) and `f64` (exactness tests), and can be evaluated with dual numbers by a
//! test oracle that implements this trait.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A real scalar: the arithmetic and elementary functions the neuron-model language allows.
pub trait Real:
    Copy
    + Debug
    + Default
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// Converts an `f64` (a literal or a parameter value) to this type.
    fn from_f64(x: f64) -> Self;
    /// The value as `f64` (the real part, for dual numbers).
    fn to_f64(self) -> f64;
    /// `e^self`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Integer power.
    fn powi(self, n: i32) -> Self;
    /// Real power.
    fn powf(self, e: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Sine.
    fn sin(self) -> Self;
    /// Cosine.
    fn cos(self) -> Self;
    /// Arc tangent.
    fn atan(self) -> Self;
    /// The error function.
    fn erf(self) -> Self;

    /// `0`.
    #[inline(always)]
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    /// `1`.
    #[inline(always)]
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    /// Logistic sigmoid `1 / (1 + e^-x)`.
    #[inline(always)]
    fn sigmoid(self) -> Self {
        Self::one() / (Self::one() + (-self).exp())
    }
    /// The smaller of two values (the first when equal).
    #[inline(always)]
    fn min(self, other: Self) -> Self {
        if other < self { other } else { self }
    }
    /// The larger of two values (the first when equal).
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        if other > self { other } else { self }
    }
    /// `self` limited to `[lo, hi]`.
    #[inline(always)]
    fn clamp(self, lo: Self, hi: Self) -> Self {
        if self < lo {
            lo
        } else if self > hi {
            hi
        } else {
            self
        }
    }
    /// `-1`, `0` or `1` by the sign of the value (`0` at zero).
    #[inline(always)]
    fn signum0(self) -> Self {
        if self > Self::zero() {
            Self::one()
        } else if self < Self::zero() {
            -Self::one()
        } else {
            Self::zero()
        }
    }
    /// `true` when the value is neither infinite nor NaN.
    #[inline(always)]
    fn is_finite_value(self) -> bool {
        self.to_f64().is_finite()
    }
}

macro_rules! impl_real {
    ($t:ty, $erf:path) => {
        impl Real for $t {
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn atan(self) -> Self {
                <$t>::atan(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
        }
    };
}

impl_real!(f32, libm::erff);
impl_real!(f64, libm::erf);

/// The float types networks are built with: [`Real`] plus what matrix products need.
/// Implemented for `f32` and `f64` only.
pub trait Float:
    Real + ndarray::LinalgScalar + ndarray::ScalarOperand + std::iter::Sum + crate::linalg::block::RegisterBlock
{
    /// `self · a + b`: one fused instruction when the target has FMA, otherwise a multiply
    /// and an add (never a slow software fused multiply-add).
    fn mul_add_fast(self, a: Self, b: Self) -> Self;
}

/// Whether the target executes a fused multiply-add as one instruction.
const HARDWARE_FMA: bool = cfg!(any(target_feature = "fma", target_arch = "aarch64"));

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            #[inline(always)]
            fn mul_add_fast(self, a: Self, b: Self) -> Self {
                if HARDWARE_FMA {
                    self.mul_add(a, b)
                } else {
                    self * a + b
                }
            }
        }
    };
}

impl_float!(f32);
impl_float!(f64);
