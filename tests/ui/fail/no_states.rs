use plasticity_runtime::neuron_model;

#[neuron_model(surrogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[param(default = 1.0)]
        g: f64,
    }
    fn step() {
        Next { spike: g }
    }
}

fn main() {}
