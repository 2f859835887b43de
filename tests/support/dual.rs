//! A forward-mode dual number `a + b ε`, `ε² = 0`: an oracle independent of the macro's
//! symbolic differentiation.

use std::cmp::Ordering;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use plasticity_runtime::Real;

/// Value and derivative along one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dual {
    /// Real part.
    pub re: f64,
    /// Derivative part.
    pub eps: f64,
}

impl Dual {
    /// A variable seeded with derivative `eps`.
    pub fn new(re: f64, eps: f64) -> Self {
        Dual { re, eps }
    }
    fn chain(self, f: f64, df: f64) -> Self {
        Dual {
            re: f,
            eps: df * self.eps,
        }
    }
}

impl PartialOrd for Dual {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.re.partial_cmp(&other.re)
    }
}

impl Add for Dual {
    type Output = Dual;
    fn add(self, o: Dual) -> Dual {
        Dual {
            re: self.re + o.re,
            eps: self.eps + o.eps,
        }
    }
}
impl Sub for Dual {
    type Output = Dual;
    fn sub(self, o: Dual) -> Dual {
        Dual {
            re: self.re - o.re,
            eps: self.eps - o.eps,
        }
    }
}
impl Mul for Dual {
    type Output = Dual;
    fn mul(self, o: Dual) -> Dual {
        Dual {
            re: self.re * o.re,
            eps: self.eps * o.re + self.re * o.eps,
        }
    }
}
impl Div for Dual {
    type Output = Dual;
    fn div(self, o: Dual) -> Dual {
        Dual {
            re: self.re / o.re,
            eps: (self.eps * o.re - self.re * o.eps) / (o.re * o.re),
        }
    }
}
impl Neg for Dual {
    type Output = Dual;
    fn neg(self) -> Dual {
        Dual {
            re: -self.re,
            eps: -self.eps,
        }
    }
}
impl AddAssign for Dual {
    fn add_assign(&mut self, o: Dual) {
        *self = *self + o;
    }
}
impl SubAssign for Dual {
    fn sub_assign(&mut self, o: Dual) {
        *self = *self - o;
    }
}
impl MulAssign for Dual {
    fn mul_assign(&mut self, o: Dual) {
        *self = *self * o;
    }
}

impl Real for Dual {
    fn from_f64(x: f64) -> Self {
        Dual { re: x, eps: 0.0 }
    }
    fn to_f64(self) -> f64 {
        self.re
    }
    fn exp(self) -> Self {
        let e = self.re.exp();
        self.chain(e, e)
    }
    fn ln(self) -> Self {
        self.chain(self.re.ln(), 1.0 / self.re)
    }
    fn sqrt(self) -> Self {
        let s = self.re.sqrt();
        self.chain(s, 0.5 / s)
    }
    fn powi(self, n: i32) -> Self {
        self.chain(self.re.powi(n), n as f64 * self.re.powi(n - 1))
    }
    fn powf(self, e: Self) -> Self {
        let v = self.re.powf(e.re);
        let d_base = if self.eps == 0.0 {
            0.0
        } else {
            e.re * self.re.powf(e.re - 1.0) * self.eps
        };
        let d_exp = if e.eps == 0.0 { 0.0 } else { v * self.re.ln() * e.eps };
        Dual {
            re: v,
            eps: d_base + d_exp,
        }
    }
    fn abs(self) -> Self {
        if self.re < 0.0 {
            -self
        } else if self.re > 0.0 {
            self
        } else {
            Dual { re: 0.0, eps: 0.0 }
        }
    }
    fn tanh(self) -> Self {
        let t = self.re.tanh();
        self.chain(t, 1.0 - t * t)
    }
    fn sin(self) -> Self {
        self.chain(self.re.sin(), self.re.cos())
    }
    fn cos(self) -> Self {
        self.chain(self.re.cos(), -self.re.sin())
    }
    fn atan(self) -> Self {
        self.chain(self.re.atan(), 1.0 / (1.0 + self.re * self.re))
    }
    fn erf(self) -> Self {
        let d = 2.0 / std::f64::consts::PI.sqrt() * (-self.re * self.re).exp();
        self.chain(erf64(self.re), d)
    }
    fn sigmoid(self) -> Self {
        let s = 1.0 / (1.0 + (-self.re).exp());
        self.chain(s, s * (1.0 - s))
    }
}

/// `erf` through the runtime's own f64 implementation.
fn erf64(x: f64) -> f64 {
    <f64 as Real>::erf(x)
}
