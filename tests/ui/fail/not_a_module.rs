use plasticity_runtime::neuron_model;

#[neuron_model]
struct M {
    v: f64,
}

fn main() {}
