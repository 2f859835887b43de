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
        let a = exp(v, i);
        let b = powi(v, 1.5);
        let c = spike(v, triangle(1.0));
        let d = spike(v, hat(1.0));
        Next { v: v + i, spike: spike(v) }
    }
}

fn main() {}
