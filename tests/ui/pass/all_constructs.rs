//! Every construct of the language in one model.
use plasticity_runtime::{neuron_model, NeuronModel};

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod everything {
    /// A model that uses every construct.
    pub struct Everything {
        #[param(default = 0.9)]
        pub alpha: f64,
        #[param(default = 1.0, learnable)]
        pub v_th: f64,
        #[param(default = (-1.0f64 / 20.0).exp())]
        pub rho: f64,
        #[state(init = 0.5 * v_th)]
        v: f64,
        #[state(init = 0.0)]
        a: f64,
        #[input]
        exc: f64,
        #[input]
        inh: f64,
    }

    fn step() {
        let drive: f64 = exc - inh;
        let lit = 1.5e-1 + -2.0 * 3.0 / 4.0;
        let f = exp(-v) + ln(1.0 + a * a) + sqrt(1.0 + v * v) + powi(v, 3) + powf(1.0 + a * a, 0.5);
        let g = abs(v) + tanh(v) + sin(v) + v.cos() + sigmoid(v) + min(v, a) + max(v, a) + clamp(v, -1.0, 1.0);
        let methods = v.exp() + v.abs().tanh() + a.max(v).min(2.0) + v.powi(2) + v.clamp(-1.0, 1.0) + v.sigmoid();
        let branch = if v > 0.0 && !(a >= 1.0) || v == a { v } else if v < -1.0 { -v } else { 0.0 };
        let block = { let t = v * 2.0; t + 1.0 };
        let psi = triangle(0.3, 1.0);
        let z_prev = detach(spike(v - v_th, psi));
        let others = spike(v, sigmoid(5.0)) + spike(v, arctan(2.0)) + spike(v, gaussian(0.5))
            + spike(v, exponential(1.0, 2.0)) + spike(v);
        let v = alpha * v + drive - z_prev * v_th + 0.0 * (f + g + methods + branch + block + others + lit);
        Next { v: v, a: rho * a + z_prev, spike: spike(v - v_th, fast_sigmoid(5.0)) }
    }
}

fn main() {
    let m = everything::Everything::default();
    let mut next = [0.0f64; 2];
    let mut dynv = vec![0.0f64; <everything::Everything as NeuronModel>::NUM_DYNAMIC];
    let z = m.eval_partials(&[1.0], &[0.2, 0.1], &[1.0, 0.5], &mut next, &mut dynv, &mut plasticity_runtime::Plain);
    assert!(z == 0.0 || z == 1.0);
    let mut next32 = [0.0f32; 2];
    m.eval(&[1.0f32], &[0.2, 0.1], &[1.0, 0.5], &mut next32, &mut plasticity_runtime::Plain);
    assert!(everything::Everything::describe().contains("Everything"));
}
