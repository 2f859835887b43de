//! Bellec et al. (2020), "A solution to the learning dilemma for recurrent networks of
//! spiking neurons": LIF and ALIF neurons with reset by subtraction.

use crate::neuron_model;

#[neuron_model]
pub mod lif {
    /// Bellec's LIF neuron, as in the e-prop reference implementation: the reset is detached
    /// from the gradient, so the membrane eligibility is a filtered presynaptic trace.
    ///
    /// `z^{t-1} = H(v^{t-1} − v_th)`, `v^t = α v^{t-1} + I^t − z^{t-1} v_th`,
    /// output `z^t = H(v^t − v_th)`, surrogate `(γ/v_th) max(0, 1 − |v − v_th|/v_th)`.
    pub struct BellecLif {
        /// Membrane decay per step, `exp(−dt/τ_m)`.
        #[param(default = 0.9)]
        pub alpha: f64,
        /// Firing threshold.
        #[param(default = 0.6)]
        pub v_th: f64,
        /// Surrogate height factor γ.
        #[param(default = 0.3)]
        pub gamma: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }

    fn step() {
        let z_prev = detach(spike(v - v_th, triangle(gamma / v_th, v_th)));
        let v_next = alpha * v + i - z_prev * v_th;
        Next { v: v_next, spike: spike(v_next - v_th, triangle(gamma / v_th, v_th)) }
    }
}
