use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[param(default = 0.9, range = 0.0..=1.0)]
        alpha: f64,
        #[param(default = 1.0, learnable, range = 0.0..2.0)]
        v_th: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }
    fn step() {
        let v = alpha * v + i;
        Next { v, spike: spike(v - v_th) }
    }
}

fn main() {}
