use plasticity_runtime::models::*;
fn main() {
    println!("{}", BellecLif::describe());
    println!("{}", BellecAlif::describe());
    println!("{}", CubaLif::describe());
    println!("{}", SigmaDelta::describe());
    println!("{}", LeakyIntegrator::describe());
}
