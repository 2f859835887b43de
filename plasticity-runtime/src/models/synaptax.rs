//! The neuron models of Lohoff, Kaya, Assmuth & Neftci (2025), "A Truly Sparse and General
//! Implementation of Gradient-Based Synaptic Plasticity", in their conventions: input scaled
//! by `(1 − β)`, spike from the freshly integrated potential, and the surrogate `σ(10 x)`'s
//! derivative.

use crate::neuron_model;

#[neuron_model(surrogate = sigmoid(10.0))]
pub mod lif {
    /// The paper's LIF: `u = β v + (1 − β) I`, `z = H(u − θ)`, reset to zero:
    /// `v' = u (1 − z)`.
    pub struct PaperLif {
        /// Membrane decay per step.
        #[param(default = 0.95)]
        pub beta: f64,
        /// Threshold `θ`.
        #[param(default = 1.0)]
        pub threshold: f64,
        /// Membrane potential (after reset).
        #[state(init = 0.0)]
        v: f64,
        /// Synaptic input current.
        #[input]
        i: f64,
    }

    fn step() {
        let u = beta * v + (1.0 - beta) * i;
        let z = spike(u - threshold);
        Next {
            v: u * (1.0 - z),
            spike: z,
        }
    }
}

#[neuron_model(surrogate = sigmoid(10.0))]
pub mod alif {
    /// The paper's "ALIF", whose adaptation is a current: with the previous spike
    /// `z̃ = H(u − θ)`, `a' = α u + β a + γ z̃`, `u' = α (u − z̃) + (1 − α)(I − a')`,
    /// output `z = H(u' − θ)`.
    pub struct PaperAlif {
        /// Membrane decay per step `α`.
        #[param(default = 0.95)]
        pub alpha: f64,
        /// Adaptation-current decay per step `β`.
        #[param(default = 0.9)]
        pub beta: f64,
        /// Spike-triggered adaptation `γ`.
        #[param(default = 0.1)]
        pub gamma: f64,
        /// Threshold `θ`.
        #[param(default = 1.0)]
        pub threshold: f64,
        /// Membrane potential.
        #[state(init = 0.0)]
        u: f64,
        /// Adaptation current.
        #[state(init = 0.0)]
        a: f64,
        /// Synaptic input current.
        #[input]
        i: f64,
    }

    fn step() {
        let z_prev = spike(u - threshold);
        let a_next = alpha * u + beta * a + gamma * z_prev;
        let u_next = alpha * (u - z_prev) + (1.0 - alpha) * (i - a_next);
        Next {
            u: u_next,
            a: a_next,
            spike: spike(u_next - threshold),
        }
    }
}

#[neuron_model(surrogate = sigmoid(10.0))]
pub mod sigma_delta {
    /// A Sigma-Delta neuron: the input (itself a stream of changes) is integrated, passed
    /// through a ReLU, and the neuron sends the change of its activation since its last
    /// message once that change exceeds a threshold: a graded spike.
    ///
    /// `σ' = σ + I`, `y = max(σ', 0)`, `Δ = y − s`, `f = H(|Δ| − θ)`, `z = f Δ`, `s' = s + z`.
    pub struct SigmaDelta {
        /// Send threshold `θ`.
        #[param(default = 0.1)]
        pub threshold: f64,
        /// Accumulated input.
        #[state(init = 0.0)]
        sigma: f64,
        /// Activation last sent.
        #[state(init = 0.0)]
        sent: f64,
        /// Input (changes of the presynaptic activations).
        #[input]
        i: f64,
    }

    fn step() {
        let sigma_next = sigma + i;
        let y = max(sigma_next, 0.0);
        let delta = y - sent;
        let z = spike(abs(delta) - threshold) * delta;
        Next {
            sigma: sigma_next,
            sent: sent + z,
            spike: z,
        }
    }
}
