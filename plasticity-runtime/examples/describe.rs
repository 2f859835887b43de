use plasticity_runtime::models::bellec::lif::BellecLif;
fn main() { println!("{}", BellecLif::describe()); }
