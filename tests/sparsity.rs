//! The sparsity pattern and trace layout of every shipped model match hand derivations.

use plasticity_runtime::models::*;
use plasticity_runtime::{EntryKind, Matrix, NeuronModel, RowLayout};

/// `'0'` structurally zero, `'c'` constant, `'d'` dynamic.
fn kind<M: NeuronModel>(m: Matrix, r: usize, c: usize) -> char {
    match M::PATTERN.entry(m, r, c).map(|e| e.kind) {
        None => '0',
        Some(EntryKind::Constant(_)) => 'c',
        Some(EntryKind::Dynamic(_)) => 'd',
    }
}

/// The pattern of `[J | B | P]` with the spike row last, one string per row.
fn pattern<M: NeuronModel>() -> Vec<String> {
    let (k, p, q) = (M::NUM_STATES, M::NUM_INPUTS, M::NUM_LEARNABLE);
    (0..=k)
        .map(|r| {
            let (mj, mb, mp, row) = if r < k {
                (Matrix::J, Matrix::B, Matrix::P, r)
            } else {
                (Matrix::Jz, Matrix::Bz, Matrix::Pz, 0)
            };
            let mut s = String::new();
            s.extend((0..k).map(|c| kind::<M>(mj, row, c)));
            s.push('|');
            s.extend((0..p).map(|c| kind::<M>(mb, row, c)));
            if q > 0 {
                s.push('|');
                s.extend((0..q).map(|c| kind::<M>(mp, row, c)));
            }
            s
        })
        .collect()
}

fn layout<M: NeuronModel>(port: usize) -> Vec<RowLayout> {
    M::PATTERN.ports[port].rows.to_vec()
}

use RowLayout::{Absent, Factorised as F, PerSynapse as S};

#[test]
fn bellec_lif_detached_reset_is_constant_and_factorised() {
    // v' = α v + I − detach(z̃) v_th: J = [α], B = [1]; the counter r is not differentiated.
    assert_eq!(pattern::<BellecLif>(), ["c0|c", "00|0", "d0|d"]);
    assert_eq!(layout::<BellecLif>(0), [F(0), Absent]);
    let e = BellecLif::PATTERN.entry(Matrix::J, 0, 0).unwrap();
    assert_eq!(e.formula, "alpha");
}

#[test]
fn bellec_alif_keeps_adaptation_per_synapse() {
    // ε^v ← α ε^v + x (factorised); ε^a ← (ρ − ψβ) ε^a + ψ ε^v (per synapse).
    assert_eq!(pattern::<BellecAlif>(), ["c00|c", "dd0|0", "000|0", "dd0|d"]);
    assert_eq!(layout::<BellecAlif>(0), [F(0), S(0), Absent]);
}

#[test]
fn diff_reset_makes_the_membrane_dynamic() {
    // J_vv = α − ψ v_th depends on the state: no factorisation.
    assert_eq!(pattern::<BellecLifDiffReset>(), ["d|c", "d|d"]);
    assert_eq!(layout::<BellecLifDiffReset>(0), [S(0)]);
    assert_eq!(pattern::<BellecAlifDiffReset>(), ["dd|c", "dd|0", "dd|d"]);
    assert_eq!(layout::<BellecAlifDiffReset>(0), [S(0), S(1)]);
}

#[test]
fn paper_models() {
    // v' = u (1 − H(u − θ)), u = β v + (1 − β) I.
    assert_eq!(pattern::<PaperLif>(), ["d|d", "d|d"]);
    assert_eq!(layout::<PaperLif>(0), [S(0)]);
    // u' = α(u − z̃) + (1 − α)(I − a'): ∂u'/∂a = −(1 − α)β is constant.
    assert_eq!(pattern::<PaperAlif>(), ["dc|c", "dc|0", "dd|d"]);
    assert_eq!(pattern::<SigmaDelta>(), ["c0|c", "dd|d", "dd|d"]);
    assert_eq!(layout::<SigmaDelta>(0), [F(0), S(0)]);
}

#[test]
fn classic_models() {
    // CubaLif: syn' = α_s syn + exc − inh is linear with constant coefficients.
    assert_eq!(pattern::<CubaLif>(), ["dc|cc|d", "0c|cc|0", "dd|dd|d"]);
    assert_eq!(layout::<CubaLif>(0), [S(0), F(0)]);
    assert_eq!(layout::<CubaLif>(1), [S(0), F(0)]);
    // The hard reset v' = v* + z̃ (c − v*) makes ∂v'/∂I = dt (1 − z̃) dynamic; the recovery
    // variable decays linearly (constant ∂u'/∂u) but jumps by d z̃ (dynamic ∂u'/∂v).
    assert_eq!(pattern::<Izhikevich>(), ["dd|d", "dc|0", "dd|d"]);
    assert_eq!(pattern::<AdEx>(), ["dd|d", "dc|0", "dd|d"]);
    // Learnable α makes every entry per neuron.
    assert_eq!(pattern::<LeakyIntegrator>(), ["d|d|d", "d|d|d"]);
    assert_eq!(layout::<LeakyIntegrator>(0), [S(0)]);
}

#[test]
fn describe_reports_the_layout() {
    let text = BellecAlif::describe();
    assert!(text.contains("ε^v factorised"), "{text}");
    assert!(text.contains("ε^a per synapse"), "{text}");
    assert!(text.contains("ε^r absent"), "{text}");
}
