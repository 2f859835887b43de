use plasticity_runtime::neuron_model;

#[neuron_model(surogate = fast_sigmoid(10.0))]
mod m {
    struct M {
        #[param(defalt = 1.0)]
        a: f64,
        #[param]
        b: f64,
        #[state(init = 0.0, init = 1.0)]
        v: f64,
        #[input(port = 1)]
        i: f64,
    }
    fn step() {
        Next { v: v + i * a * b, spike: v }
    }
}

fn main() {}
