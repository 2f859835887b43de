//! Bellec et al. (2020), "A solution to the learning dilemma for recurrent networks of
//! spiking neurons" (Nat. Commun. 11:3625): LIF and ALIF neurons with reset by subtraction
//! and the piecewise-linear pseudo-derivative `ψ = (γ/v_th) max(0, 1 − |v − A|/v_th)`.
//!
//! [`lif::BellecLif`] and [`alif::BellecAlif`] follow Bellec's implementation: the reset is
//! detached from the gradient, so `ε^v` is a filtered presynaptic trace (factorised), and
//! an optional refractory period is kept by a non-differentiable counter state.
//! [`lif_diff_reset::BellecLifDiffReset`] and [`alif_diff_reset::BellecAlifDiffReset`] keep the
//! reset in the gradient and have no refractory period: the exactness benchmark of the
//! `exact_gradients` example.

use crate::neuron_model;

#[neuron_model]
pub mod lif {
    /// Bellec's LIF neuron (reset detached, optional refractory period).
    ///
    /// With `r` the remaining refractory steps:
    /// `z̃ = 0 if r > 0 else H(v − v_th)` (detached), `v' = α v + I − z̃ v_th`,
    /// `r' = n_ref if z̃ = 1 else max(r − 1, 0)` (not differentiated),
    /// output `z = 0 if r' > 0 else H(v' − v_th)`.
    pub struct BellecLif {
        /// Membrane decay per step, `exp(−dt/τ_m)`.
        #[param(default = 0.9)]
        pub alpha: f64,
        /// Firing threshold `v_th`.
        #[param(default = 0.6)]
        pub v_th: f64,
        /// Pseudo-derivative height factor `γ`.
        #[param(default = 0.3)]
        pub gamma: f64,
        /// Refractory period in steps (0 disables it).
        #[param(default = 0.0)]
        pub n_ref: f64,
        /// Membrane potential.
        #[state(init = 0.0)]
        v: f64,
        /// Remaining refractory steps.
        #[state(init = 0.0)]
        r: f64,
        /// Synaptic input current.
        #[input]
        i: f64,
    }

    fn step() {
        let psi = triangle(gamma / v_th, v_th);
        let z_prev = detach(if r > 0.5 { 0.0 } else { spike(v - v_th, psi) });
        let v_next = alpha * v + i - z_prev * v_th;
        let r_next = detach(if z_prev > 0.5 { n_ref } else { max(r - 1.0, 0.0) });
        let z = if r_next > 0.5 { 0.0 } else { spike(v_next - v_th, psi) };
        Next {
            v: v_next,
            r: r_next,
            spike: z,
        }
    }
}

#[neuron_model]
pub mod alif {
    /// Bellec's ALIF neuron: LIF with an adaptive threshold `A = v_th + β a` (reset detached,
    /// optional refractory period).
    ///
    /// `z̃ = 0 if r > 0 else H(v − A)`, `v' = α v + I − detach(z̃) v_th`, `a' = ρ a + z̃`,
    /// output `z = 0 if r' > 0 else H(v' − v_th − β a')`. The adaptation path keeps its
    /// gradient, so `ε^a` is per synapse while `ε^v` stays factorised.
    pub struct BellecAlif {
        /// Membrane decay per step, `exp(−dt/τ_m)`.
        #[param(default = 0.9)]
        pub alpha: f64,
        /// Adaptation decay per step, `exp(−dt/τ_a)`.
        #[param(default = 0.97)]
        pub rho: f64,
        /// Adaptation strength `β`.
        #[param(default = 1.7)]
        pub beta: f64,
        /// Baseline threshold `v_th`.
        #[param(default = 0.6)]
        pub v_th: f64,
        /// Pseudo-derivative height factor `γ`.
        #[param(default = 0.3)]
        pub gamma: f64,
        /// Refractory period in steps (0 disables it).
        #[param(default = 0.0)]
        pub n_ref: f64,
        /// Membrane potential.
        #[state(init = 0.0)]
        v: f64,
        /// Threshold adaptation.
        #[state(init = 0.0)]
        a: f64,
        /// Remaining refractory steps.
        #[state(init = 0.0)]
        r: f64,
        /// Synaptic input current.
        #[input]
        i: f64,
    }

    fn step() {
        let psi = triangle(gamma / v_th, v_th);
        let z_prev = if r > 0.5 { 0.0 } else { spike(v - v_th - beta * a, psi) };
        let v_next = alpha * v + i - detach(z_prev) * v_th;
        let a_next = rho * a + z_prev;
        let r_next = detach(if z_prev > 0.5 { n_ref } else { max(r - 1.0, 0.0) });
        let z = if r_next > 0.5 {
            0.0
        } else {
            spike(v_next - v_th - beta * a_next, psi)
        };
        Next {
            v: v_next,
            a: a_next,
            r: r_next,
            spike: z,
        }
    }
}

#[neuron_model]
pub mod lif_diff_reset {
    /// Bellec's LIF with the reset kept in the gradient and no refractory period.
    ///
    /// `z̃ = H(v − v_th)`, `v' = α v + I − z̃ v_th`, output `z = H(v' − v_th)`.
    pub struct BellecLifDiffReset {
        /// Membrane decay per step, `exp(−dt/τ_m)`.
        #[param(default = 0.9)]
        pub alpha: f64,
        /// Firing threshold `v_th`.
        #[param(default = 0.6)]
        pub v_th: f64,
        /// Pseudo-derivative height factor `γ`.
        #[param(default = 0.3)]
        pub gamma: f64,
        /// Membrane potential.
        #[state(init = 0.0)]
        v: f64,
        /// Synaptic input current.
        #[input]
        i: f64,
    }

    fn step() {
        let psi = triangle(gamma / v_th, v_th);
        let z_prev = spike(v - v_th, psi);
        let v_next = alpha * v + i - z_prev * v_th;
        Next {
            v: v_next,
            spike: spike(v_next - v_th, psi),
        }
    }
}

#[neuron_model]
pub mod alif_diff_reset {
    /// Bellec's ALIF with the reset kept in the gradient and no refractory period.
    ///
    /// `z̃ = H(v − v_th − β a)`, `v' = α v + I − z̃ v_th`, `a' = ρ a + z̃`,
    /// output `z = H(v' − v_th − β a')`.
    pub struct BellecAlifDiffReset {
        /// Membrane decay per step, `exp(−dt/τ_m)`.
        #[param(default = 0.9)]
        pub alpha: f64,
        /// Adaptation decay per step, `exp(−dt/τ_a)`.
        #[param(default = 0.97)]
        pub rho: f64,
        /// Adaptation strength `β`.
        #[param(default = 1.7)]
        pub beta: f64,
        /// Baseline threshold `v_th`.
        #[param(default = 0.6)]
        pub v_th: f64,
        /// Pseudo-derivative height factor `γ`.
        #[param(default = 0.3)]
        pub gamma: f64,
        /// Membrane potential.
        #[state(init = 0.0)]
        v: f64,
        /// Threshold adaptation.
        #[state(init = 0.0)]
        a: f64,
        /// Synaptic input current.
        #[input]
        i: f64,
    }

    fn step() {
        let psi = triangle(gamma / v_th, v_th);
        let z_prev = spike(v - v_th - beta * a, psi);
        let v_next = alpha * v + i - z_prev * v_th;
        let a_next = rho * a + z_prev;
        Next {
            v: v_next,
            a: a_next,
            spike: spike(v_next - v_th - beta * a_next, psi),
        }
    }
}
