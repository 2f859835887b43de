//! Classic single-neuron models in discrete time: a current-based LIF with a synaptic
//! current state, Izhikevich (2003) and AdEx (Brette & Gerstner 2005) by explicit Euler, and
//! a non-spiking leaky integrator.

use crate::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
pub mod cuba_lif {
    /// Current-based LIF (as in snnTorch's `Synaptic` and Norse's `LIF`): an exponential
    /// synaptic current drives the membrane, reset by subtraction, excitatory and inhibitory
    /// ports.
    ///
    /// `z̃ = H(v − v_th)`, `s' = α_s s + I_exc − I_inh`, `v' = α_m v + (1 − α_m) s' − z̃ v_th`,
    /// output `z = H(v' − v_th)`. The threshold is learnable per neuron.
    pub struct CubaLif {
        /// Synaptic current decay per step, `exp(−dt/τ_syn)`.
        #[param(default = 0.8)]
        pub alpha_syn: f64,
        /// Membrane decay per step, `exp(−dt/τ_mem)`.
        #[param(default = 0.9)]
        pub alpha_mem: f64,
        /// Firing threshold (learnable).
        #[param(default = 1.0, learnable)]
        pub v_th: f64,
        /// Membrane potential.
        #[state(init = 0.0)]
        v: f64,
        /// Synaptic current.
        #[state(init = 0.0)]
        syn: f64,
        /// Excitatory input.
        #[input]
        exc: f64,
        /// Inhibitory input.
        #[input]
        inh: f64,
    }

    fn step() {
        let z_prev = spike(v - v_th);
        let syn_next = alpha_syn * syn + exc - inh;
        let v_next = alpha_mem * v + (1.0 - alpha_mem) * syn_next - z_prev * v_th;
        Next {
            v: v_next,
            syn: syn_next,
            spike: spike(v_next - v_th),
        }
    }
}

#[neuron_model(surrogate = fast_sigmoid(0.5))]
pub mod izhikevich {
    /// Izhikevich (2003), "Simple model of spiking neurons", explicit Euler with step `dt`
    /// (ms), regular-spiking defaults. Potentials in mV, input in the model's units.
    ///
    /// `z̃ = H(v − v_peak)`, `v* = v + dt (0.04 v² + 5 v + 140 − u + I)`,
    /// `v' = v* + z̃ (c − v*)`, `u' = u + dt a (b v − u) + z̃ d`, output `z = H(v' − v_peak)`.
    pub struct Izhikevich {
        /// Recovery time scale `a` (1/ms).
        #[param(default = 0.02)]
        pub a: f64,
        /// Recovery sensitivity `b`.
        #[param(default = 0.2)]
        pub b: f64,
        /// Reset potential `c` (mV).
        #[param(default = -65.0)]
        pub c: f64,
        /// Recovery jump after a spike `d`.
        #[param(default = 8.0)]
        pub d: f64,
        /// Spike cut-off (mV).
        #[param(default = 30.0)]
        pub v_peak: f64,
        /// Euler step (ms).
        #[param(default = 0.5)]
        pub dt: f64,
        /// Membrane potential (mV).
        #[state(init = c)]
        v: f64,
        /// Recovery variable.
        #[state(init = b * c)]
        u: f64,
        /// Input current.
        #[input]
        i: f64,
    }

    fn step() {
        let z_prev = spike(v - v_peak);
        let v_int = v + dt * (0.04 * v * v + 5.0 * v + 140.0 - u + i);
        let v_next = v_int + z_prev * (c - v_int);
        let u_next = u + dt * a * (b * v - u) + z_prev * d;
        Next {
            v: v_next,
            u: u_next,
            spike: spike(v_next - v_peak),
        }
    }
}

#[neuron_model(surrogate = fast_sigmoid(0.5))]
pub mod adex {
    /// Adaptive exponential integrate-and-fire (Brette & Gerstner 2005), explicit Euler.
    /// Units: mV, ms, pF, nS, pA; defaults from the paper's regular-spiking example.
    ///
    /// `z̃ = H(v − v_peak)`, `v* = v + dt/C (−g_L (v − E_L) + g_L Δ_T e^{(v − V_T)/Δ_T} − w + I)`,
    /// `v' = v* + z̃ (V_r − v*)`, `w' = w + dt/τ_w (a (v − E_L) − w) + z̃ b`,
    /// output `z = H(v' − v_peak)`.
    pub struct AdEx {
        /// Membrane capacitance `C` (pF).
        #[param(default = 281.0)]
        pub c_m: f64,
        /// Leak conductance `g_L` (nS).
        #[param(default = 30.0)]
        pub g_l: f64,
        /// Leak reversal `E_L` (mV).
        #[param(default = -70.6)]
        pub e_l: f64,
        /// Threshold `V_T` (mV).
        #[param(default = -50.4)]
        pub v_t: f64,
        /// Slope factor `Δ_T` (mV).
        #[param(default = 2.0)]
        pub delta_t: f64,
        /// Adaptation time constant `τ_w` (ms).
        #[param(default = 144.0)]
        pub tau_w: f64,
        /// Subthreshold adaptation `a` (nS).
        #[param(default = 4.0)]
        pub a: f64,
        /// Spike-triggered adaptation `b` (pA).
        #[param(default = 80.5)]
        pub b: f64,
        /// Reset potential `V_r` (mV).
        #[param(default = -70.6)]
        pub v_r: f64,
        /// Spike detection (mV).
        #[param(default = -40.0)]
        pub v_peak: f64,
        /// Euler step (ms).
        #[param(default = 0.1)]
        pub dt: f64,
        /// Membrane potential (mV).
        #[state(init = e_l)]
        v: f64,
        /// Adaptation current (pA).
        #[state(init = 0.0)]
        w: f64,
        /// Input current (pA).
        #[input]
        i: f64,
    }

    fn step() {
        let z_prev = spike(v - v_peak);
        let drive = -g_l * (v - e_l) + g_l * delta_t * exp((v - v_t) / delta_t) - w + i;
        let v_int = v + dt / c_m * drive;
        let v_next = v_int + z_prev * (v_r - v_int);
        let w_next = w + dt / tau_w * (a * (v - e_l) - w) + z_prev * b;
        Next {
            v: v_next,
            w: w_next,
            spike: spike(v_next - v_peak),
        }
    }
}

#[neuron_model]
pub mod leaky_integrator {
    /// A non-spiking leaky integrator (rate unit) with a learnable time constant:
    /// `v' = α v + (1 − α) I`, output `z = tanh(v')`.
    pub struct LeakyIntegrator {
        /// Decay per step (learnable, kept in [0, 1]).
        #[param(default = 0.9, learnable, range = 0.0..=1.0)]
        pub alpha: f64,
        /// Activation.
        #[state(init = 0.0)]
        v: f64,
        /// Input.
        #[input]
        i: f64,
    }

    fn step() {
        let v_next = alpha * v + (1.0 - alpha) * i;
        Next {
            v: v_next,
            out: tanh(v_next),
        }
    }
}
