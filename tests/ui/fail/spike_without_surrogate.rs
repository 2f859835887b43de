use plasticity_runtime::neuron_model;

#[neuron_model]
mod m {
    struct M {
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }
    fn step() {
        Next { v: v + i, spike: spike(v - 1.0) }
    }
}

fn main() {}
