use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[param(default = 0.9, learnable)]
        alpha: f64,
        #[param(default = 1.0, learnable)]
        v_th: f64,
        #[param(default = 0.5, learnable)]
        unused: f64,
        #[state(init = 0.0)]
        v: f64,
        #[input]
        i: f64,
    }
    fn step() {
        let leak = if v > v_th { 0.5 } else { alpha };
        let v = detach(leak) * v + i;
        Next { v, spike: spike(v - 1.0) }
    }
}

fn main() {}
