use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[state(init = 0.0)]
        v: f64,
        #[state(init = v + 1.0)]
        a: f64,
        #[input]
        i: f64,
    }
    fn step() {
        Next { v: v + i, a: a, spike: spike(v) }
    }
}

fn main() {}
