use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[param(default = 1.0)]
        v: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        exp: f64,
    }
    fn step() {
        Next { v: v + exp, v: v, spike: spike(v) }
    }
}

fn main() {}
