use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }
    fn step() {
        let u = floor(v) + v.atan() + i;
        Next { v: u, spike: spike(u) }
    }
}

fn main() {}
