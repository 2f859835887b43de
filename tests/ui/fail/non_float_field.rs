use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[param(default = 3)]
        n: i32,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }
    fn step() {
        Next { v: v + i, spike: spike(v) }
    }
}

fn main() {}
