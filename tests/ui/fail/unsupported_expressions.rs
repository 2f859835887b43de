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
        let a = self.v;
        let b = v as f32;
        let c = [v, i];
        let d = println!("{}", v);
        let e = v % 2.0;
        Next { v: v + i, spike: spike(v) }
    }
}

fn main() {}
