//! Every generated partial of every shipped model equals an independent dual-number oracle
//! and fourth-order central finite differences (f64, smooth counterpart of `spike`, detached
//! values frozen), to 1e-9 relative.

use plasticity_runtime::NeuronModel;
use plasticity_runtime::models::*;
use plasticity_tests::oracle::{Point, dual, finite_differences, generated, rel_err};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const TOL: f64 = 1e-9;
const POINTS: usize = 200;

/// Samples states as `init + spread · U(-1, 1)`, inputs as `input_scale · U(-1, 1)`,
/// learnables as `value · U(0.8, 1.2)`.
fn check<M: NeuronModel>(m: &M, spread: &[f64], input_scale: f64, seed: u64) {
    let (k, p, q) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE);
    assert_eq!(spread.len(), k);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut learn0 = vec![0.0; q];
    m.learnable_init(&mut learn0);
    let mut init = vec![0.0; k];
    m.initial_state(&learn0, &mut init);
    let mut fd_checked = 0;
    let mut fd_total = 0;
    for n in 0..POINTS {
        let pt = Point {
            state: (0..k)
                .map(|i| init[i] + spread[i] * rng.random_range(-1.0..1.0))
                .collect(),
            input: (0..p).map(|_| input_scale * rng.random_range(-1.0..1.0)).collect(),
            learn: learn0.iter().map(|v| v * rng.random_range(0.8..1.2)).collect(),
        };
        let g = generated(m, &pt);
        let d = dual(m, &pt);
        let fd = finite_differences(m, &pt);
        for c in 0..g.cols {
            for r in 0..g.rows {
                let (gv, dv) = (g.at(r, c), d.at(r, c));
                assert!(
                    rel_err(gv, dv) <= TOL,
                    "{}: point {n} {pt:?}: d(row {r})/d(col {c}) generated {gv} vs dual {dv}",
                    M::PATTERN.model
                );
            }
            fd_total += 1;
            if let Some(col) = &fd[c] {
                fd_checked += 1;
                for (r, &fv) in col.iter().enumerate() {
                    let gv = g.at(r, c);
                    assert!(
                        rel_err(gv, fv) <= TOL,
                        "{}: point {n} {pt:?}: d(row {r})/d(col {c}) generated {gv} vs finite differences {fv}",
                        M::PATTERN.model
                    );
                }
            }
        }
    }
    // Points within a stencil of a kink are skipped; they must be rare.
    assert!(
        fd_checked * 10 >= fd_total * 9,
        "{}: only {fd_checked} of {fd_total} columns were smooth enough for finite differences",
        M::PATTERN.model
    );
}

#[test]
fn bellec_lif() {
    check(&BellecLif::default(), &[1.0, 0.0], 1.0, 1);
    let refractory = BellecLif {
        n_ref: 3.0,
        ..BellecLif::default()
    };
    check(&refractory, &[1.0, 2.0], 1.0, 2);
}

#[test]
fn bellec_alif() {
    check(&BellecAlif::default(), &[1.0, 0.5, 0.0], 1.0, 3);
    check(
        &BellecAlif {
            n_ref: 2.0,
            ..BellecAlif::default()
        },
        &[1.0, 0.5, 2.0],
        1.0,
        4,
    );
}

#[test]
fn bellec_diff_reset() {
    check(&BellecLifDiffReset::default(), &[1.0], 1.0, 5);
    check(&BellecAlifDiffReset::default(), &[1.0, 0.5], 1.0, 6);
}

#[test]
fn paper_models() {
    check(&PaperLif::default(), &[1.5], 2.0, 7);
    check(&PaperAlif::default(), &[1.5, 0.5], 2.0, 8);
    check(&SigmaDelta::default(), &[1.0, 1.0], 0.5, 9);
}

#[test]
fn classic_models() {
    check(&CubaLif::default(), &[1.5, 1.0], 1.0, 10);
    check(&Izhikevich::default(), &[40.0, 5.0], 10.0, 11);
    check(&AdEx::default(), &[20.0, 50.0], 500.0, 12);
    check(&LeakyIntegrator::default(), &[1.0], 2.0, 13);
}

/// The layer kernel (structure of arrays, constants hoisted) computes exactly what the
/// per-neuron kernel computes.
fn layer_matches_neuron<M: NeuronModel>(m: &M, spread: f64, seed: u64) {
    let (k, p, q, nd) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE, M::NUM_DYNAMIC);
    let n = 7;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut learn0 = vec![0.0; q];
    m.learnable_init(&mut learn0);
    let mut init = vec![0.0; k];
    m.initial_state(&learn0, &mut init);
    let state: Vec<f64> = (0..k * n)
        .map(|i| init[i / n] + spread * rng.random_range(-1.0..1.0))
        .collect();
    let input: Vec<f64> = (0..p * n).map(|_| spread * rng.random_range(-1.0..1.0)).collect();
    let learn: Vec<f64> = (0..q * n).map(|i| learn0[i / n] * rng.random_range(0.8..1.2)).collect();
    let mut layer_state = state.clone();
    let mut z = vec![0.0; n];
    let mut dynv = vec![0.0; nd * n];
    m.eval_layer(
        &learn,
        &mut layer_state,
        &input,
        &mut z,
        &mut dynv,
        &mut plasticity_runtime::Plain,
    );
    for j in 0..n {
        let col = |v: &[f64], rows: usize| (0..rows).map(|r| v[r * n + j]).collect::<Vec<f64>>();
        let mut next = vec![0.0; k];
        let mut dv = vec![0.0; nd];
        let zj = m.eval_partials(
            &col(&learn, q),
            &col(&state, k),
            &col(&input, p),
            &mut next,
            &mut dv,
            &mut plasticity_runtime::Plain,
        );
        assert_eq!(
            zj.to_bits(),
            z[j].to_bits(),
            "{}: output of neuron {j}",
            M::PATTERN.model
        );
        assert_eq!(next, col(&layer_state, k), "{}: state of neuron {j}", M::PATTERN.model);
        assert_eq!(dv, col(&dynv, nd), "{}: partials of neuron {j}", M::PATTERN.model);
    }
    // Forward only (no partials requested) gives the same states.
    let mut fwd_state = state.clone();
    let mut z2 = vec![0.0; n];
    m.eval_layer(
        &learn,
        &mut fwd_state,
        &input,
        &mut z2,
        &mut [],
        &mut plasticity_runtime::Plain,
    );
    assert_eq!(fwd_state, layer_state);
    assert_eq!(z2, z);
}

#[test]
fn layer_kernels_match_neuron_kernels() {
    layer_matches_neuron(
        &BellecLif {
            n_ref: 2.0,
            ..BellecLif::default()
        },
        1.0,
        1,
    );
    layer_matches_neuron(&BellecAlif::default(), 1.0, 2);
    layer_matches_neuron(&BellecLifDiffReset::default(), 1.0, 3);
    layer_matches_neuron(&BellecAlifDiffReset::default(), 1.0, 4);
    layer_matches_neuron(&PaperLif::default(), 2.0, 5);
    layer_matches_neuron(&PaperAlif::default(), 2.0, 6);
    layer_matches_neuron(&SigmaDelta::default(), 1.0, 7);
    layer_matches_neuron(&CubaLif::default(), 1.5, 8);
    layer_matches_neuron(&Izhikevich::default(), 30.0, 9);
    layer_matches_neuron(&AdEx::default(), 20.0, 10);
    layer_matches_neuron(&LeakyIntegrator::default(), 1.0, 11);
}
