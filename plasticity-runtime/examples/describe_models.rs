//! Prints the sparsity pattern and eligibility-trace layout the compiler chose for every
//! shipped model.
//!
//! cargo run -p plasticity-runtime --example describe_models

use plasticity_runtime::models::*;

fn main() {
    for report in [
        BellecLif::describe(),
        BellecAlif::describe(),
        BellecLifDiffReset::describe(),
        BellecAlifDiffReset::describe(),
        PaperLif::describe(),
        PaperAlif::describe(),
        SigmaDelta::describe(),
        CubaLif::describe(),
        Izhikevich::describe(),
        AdEx::describe(),
        LeakyIntegrator::describe(),
    ] {
        println!("{report}");
    }
}
