//! The smallest model: one state, one input, a spike from the new state.
use plasticity_runtime::neuron_model;

#[neuron_model]
pub mod tiny {
    pub struct Tiny {
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }

    fn step() {
        let v = 0.9 * v + i;
        Next { v, spike: spike(v - 1.0, triangle(0.3, 1.0)) }
    }
}

fn main() {
    let _ = tiny::Tiny::default();
}
