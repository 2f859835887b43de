use plasticity_runtime::neuron_model;

#[neuron_model]
mod m {
    struct RateUnit {
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }
    fn step() {
        let v = 0.9 * v + i;
        Next { v, out: tanh(v), spike: tanh(v) }
    }
}

fn main() {}
