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
    let mut init = vec![0.0; k];
    m.initial_state(&mut init);
    let mut learn0 = vec![0.0; q];
    m.learnable_init(&mut learn0);
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
