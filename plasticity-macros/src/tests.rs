//! Phase tests on the compiler as a library: random expressions differentiated
//! symbolically against a dual-number interpreter and finite differences, and expansion
//! snapshots of two models.

use proc_macro2::Span;
use proptest::prelude::*;

use crate::dag::{CmpOp, Dag, NodeId, Op, Surrogate, SurrogateKind, Var};
use crate::diff::derivatives;

const VARS: [Var; 4] = [Var::State(0), Var::State(1), Var::Input(0), Var::Learn(0)];

/// A random expression, as a recipe to build in a DAG.
#[derive(Clone, Debug)]
enum E {
    Var(usize),
    Param,
    Const(f64),
    Bin(u8, Box<E>, Box<E>),
    Un(u8, Box<E>),
    Powi(Box<E>, i32),
    Clamp(Box<E>, Box<E>, Box<E>),
    Select(u8, Box<E>, Box<E>, Box<E>, Box<E>),
    Spike(Box<E>),
    Detach(Box<E>),
}

fn expr() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![
        (0..VARS.len()).prop_map(E::Var),
        Just(E::Param),
        (-2.0..2.0f64).prop_map(E::Const),
    ];
    leaf.prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            (0..6u8, inner.clone(), inner.clone()).prop_map(|(o, a, b)| E::Bin(o, Box::new(a), Box::new(b))),
            (0..10u8, inner.clone()).prop_map(|(o, a)| E::Un(o, Box::new(a))),
            (inner.clone(), -3..4i32).prop_map(|(a, n)| E::Powi(Box::new(a), n)),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| E::Clamp(
                Box::new(a),
                Box::new(b),
                Box::new(c)
            )),
            (0..6u8, inner.clone(), inner.clone(), inner.clone(), inner.clone()).prop_map(|(o, a, b, c, d)| E::Select(
                o,
                Box::new(a),
                Box::new(b),
                Box::new(c),
                Box::new(d)
            )),
            inner.clone().prop_map(|a| E::Spike(Box::new(a))),
            inner.prop_map(|a| E::Detach(Box::new(a))),
        ]
    })
}

fn build(d: &mut Dag, e: &E) -> NodeId {
    let s = Span::call_site();
    match e {
        E::Var(i) => d.var(VARS[*i], s),
        E::Param => d.var(Var::Param(0), s),
        E::Const(c) => d.constant(*c, s),
        E::Bin(o, a, b) => {
            let (a, b) = (build(d, a), build(d, b));
            let op = match o {
                0 => Op::Add(a, b),
                1 => Op::Sub(a, b),
                2 => Op::Mul(a, b),
                3 => Op::Div(a, b),
                4 => Op::Min(a, b),
                _ => Op::Max(a, b),
            };
            d.make(op, s)
        }
        E::Un(o, a) => {
            let a = build(d, a);
            // Keep ln/sqrt/powf in their domain: apply them to 1 + a².
            let sq = d.make(Op::Mul(a, a), s);
            let one = d.constant(1.0, s);
            let pos = d.make(Op::Add(one, sq), s);
            let op = match o {
                0 => Op::Exp(a),
                1 => Op::Ln(pos),
                2 => Op::Sqrt(pos),
                3 => Op::Abs(a),
                4 => Op::Tanh(a),
                5 => Op::Sigmoid(a),
                6 => Op::Neg(a),
                7 => Op::Sin(a),
                8 => Op::Cos(a),
                _ => Op::Powf(pos, a),
            };
            d.make(op, s)
        }
        E::Powi(a, n) => {
            let a = build(d, a);
            d.make(Op::Powi(a, *n), s)
        }
        E::Clamp(a, b, c) => {
            let (a, b, c) = (build(d, a), build(d, b), build(d, c));
            d.make(Op::Clamp(a, b, c), s)
        }
        E::Select(o, a, b, x, y) => {
            let (a, b, x, y) = (build(d, a), build(d, b), build(d, x), build(d, y));
            let c = [CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge, CmpOp::Eq, CmpOp::Ne][*o as usize];
            let cond = d.make(Op::Cmp(c, a, b), s);
            d.make(Op::Select(cond, x, y), s)
        }
        E::Spike(a) => {
            let a = build(d, a);
            let slope = d.constant(3.0, s);
            d.make(
                Op::Spike(
                    a,
                    Surrogate {
                        kind: SurrogateKind::Sigmoid,
                        args: [slope, slope],
                    },
                ),
                s,
            )
        }
        E::Detach(a) => {
            let a = build(d, a);
            d.make(Op::Detach(a), s)
        }
    }
}

/// Value and derivative of every node, by the chain rule on `(value, derivative)` pairs:
/// an interpreter written independently of `diff.rs`. `spike` is its smooth counterpart
/// `σ(3x)` (derivative: the sigmoid surrogate); detached values are `frozen` if given.
fn dual_eval(d: &Dag, env: &[f64; 5], dir: Option<Var>, frozen: Option<&[f64]>) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::with_capacity(d.len());
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let b = |x: f64| if x != 0.0 { 1.0 } else { 0.0 };
    // `local · tangent`, exactly 0 when the operand does not depend on the direction: its
    // local derivative may be infinite there (`x⁻²` at 0), which must not turn 0 into NaN.
    let chain = |local: f64, tangent: f64| if tangent == 0.0 { 0.0 } else { local * tangent };
    for i in 0..d.len() {
        let g = |n: NodeId| v[n.0 as usize];
        let out = match d.node(NodeId(i as u32)).op {
            Op::Const(bits) => (f64::from_bits(bits), 0.0),
            Op::Var(var) => {
                let x = match var {
                    Var::State(k) => env[k],
                    Var::Input(_) => env[2],
                    Var::Learn(_) => env[3],
                    Var::Param(_) => env[4],
                };
                (x, if Some(var) == dir { 1.0 } else { 0.0 })
            }
            Op::Add(a, c) => (g(a).0 + g(c).0, g(a).1 + g(c).1),
            Op::Sub(a, c) => (g(a).0 - g(c).0, g(a).1 - g(c).1),
            Op::Mul(a, c) => (g(a).0 * g(c).0, chain(g(c).0, g(a).1) + chain(g(a).0, g(c).1)),
            Op::Div(a, c) => (
                g(a).0 / g(c).0,
                chain(1.0 / g(c).0, g(a).1) - chain(g(a).0 / (g(c).0 * g(c).0), g(c).1),
            ),
            Op::Neg(a) => (-g(a).0, -g(a).1),
            Op::Exp(a) => (g(a).0.exp(), chain(g(a).0.exp(), g(a).1)),
            Op::Ln(a) => (g(a).0.ln(), chain(1.0 / g(a).0, g(a).1)),
            Op::Sqrt(a) => (g(a).0.sqrt(), chain(1.0 / (2.0 * g(a).0.sqrt()), g(a).1)),
            Op::Powi(a, n) => (g(a).0.powi(n), chain(n as f64 * g(a).0.powi(n - 1), g(a).1)),
            Op::Powf(a, c) => {
                let y = g(a).0.powf(g(c).0);
                (y, chain(y * g(a).0.ln(), g(c).1) + chain(y * g(c).0 / g(a).0, g(a).1))
            }
            Op::Abs(a) => (
                g(a).0.abs(),
                if g(a).0 > 0.0 {
                    g(a).1
                } else if g(a).0 < 0.0 {
                    -g(a).1
                } else {
                    0.0
                },
            ),
            Op::Signum(a) => (
                if g(a).0 > 0.0 {
                    1.0
                } else if g(a).0 < 0.0 {
                    -1.0
                } else {
                    0.0
                },
                0.0,
            ),
            Op::Tanh(a) => (g(a).0.tanh(), chain(1.0 - g(a).0.tanh().powi(2), g(a).1)),
            Op::Sin(a) => (g(a).0.sin(), chain(g(a).0.cos(), g(a).1)),
            Op::Cos(a) => (g(a).0.cos(), chain(-g(a).0.sin(), g(a).1)),
            Op::Sigmoid(a) => (sig(g(a).0), chain(sig(g(a).0) * (1.0 - sig(g(a).0)), g(a).1)),
            Op::Min(a, c) => {
                if g(c).0 < g(a).0 {
                    g(c)
                } else {
                    g(a)
                }
            }
            Op::Max(a, c) => {
                if g(c).0 > g(a).0 {
                    g(c)
                } else {
                    g(a)
                }
            }
            Op::Clamp(x, lo, hi) => {
                if g(x).0 < g(lo).0 {
                    g(lo)
                } else if g(x).0 > g(hi).0 {
                    g(hi)
                } else {
                    g(x)
                }
            }
            Op::Spike(a, _) => (
                sig(3.0 * g(a).0),
                chain(3.0 * sig(3.0 * g(a).0) * (1.0 - sig(3.0 * g(a).0)), g(a).1),
            ),
            Op::SurrogateGrad(a, _) => (3.0 * sig(3.0 * g(a).0) * (1.0 - sig(3.0 * g(a).0)), 0.0),
            Op::Detach(a) => (frozen.map_or(g(a).0, |f| f[i]), 0.0),
            Op::Cmp(o, a, c) => {
                let (x, y) = (g(a).0, g(c).0);
                let r = match o {
                    CmpOp::Lt => x < y,
                    CmpOp::Le => x <= y,
                    CmpOp::Gt => x > y,
                    CmpOp::Ge => x >= y,
                    CmpOp::Eq => x == y,
                    CmpOp::Ne => x != y,
                };
                (if r { 1.0 } else { 0.0 }, 0.0)
            }
            Op::And(a, c) => (b(g(a).0) * b(g(c).0), 0.0),
            Op::Or(a, c) => (b(b(g(a).0) + b(g(c).0)), 0.0),
            Op::Not(a) => (1.0 - b(g(a).0), 0.0),
            Op::Select(c, x, y) => {
                if g(c).0 != 0.0 {
                    g(x)
                } else {
                    g(y)
                }
            }
        };
        v.push(out);
    }
    v
}

/// Whether a piecewise operation reachable from `root` compares exactly equal operands at the
/// point evaluated in `vals` (a tie): its derivative there is the convention of the branch
/// taken, which a difference quotient need not reproduce even where both sides agree (a
/// detached copy of a value clamped against the value itself).
fn tie(d: &Dag, root: NodeId, vals: &[(f64, f64)]) -> bool {
    let v = |n: NodeId| vals[n.0 as usize].0;
    d.reachable(&[root]).into_iter().any(|id| match d.node(id).op {
        Op::Min(a, b) | Op::Max(a, b) | Op::Cmp(_, a, b) => v(a) == v(b),
        Op::Clamp(x, lo, hi) => v(x) == v(lo) || v(x) == v(hi),
        _ => false,
    })
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn symbolic_derivatives_match_dual_numbers_and_finite_differences(
        e in expr(),
        env in prop::array::uniform5(-1.5..1.5f64),
    ) {
        let mut d = Dag::default();
        let root = build(&mut d, &e);
        for (vi, &var) in VARS.iter().enumerate() {
            let dnode = derivatives(&mut d, &[root], var)[0];
            // Evaluate the symbolic derivative node with the plain values of the DAG.
            let vals = dual_eval(&d, &env, None, None);
            let (y, sym) = (vals[root.0 as usize].0, vals[dnode.0 as usize].0);
            prop_assume!(y.is_finite() && sym.is_finite() && y.abs() < 1e6 && sym.abs() < 1e6);
            let dual = dual_eval(&d, &env, Some(var), None)[root.0 as usize].1;
            prop_assert!(rel(sym, dual) <= 1e-9, "d/d{var:?}: symbolic {sym} vs dual {dual}");
            // Finite differences with detached values frozen at the base point.
            let frozen: Vec<f64> = vals.iter().map(|p| p.0).collect();
            let idx = [0, 1, 2, 3][vi];
            let at = |h: f64| {
                let mut x = env;
                x[idx] += h;
                dual_eval(&d, &x, None, Some(&frozen))[root.0 as usize].0
            };
            let stencil = |h: f64| (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h);
            let (f1, f2) = (stencil(1e-4), stencil(5e-5));
            // A kink within the stencil shows as disagreement between step sizes, or
            // between one-sided differences at the point itself; a tie of a piecewise
            // function is found directly: skip those points, the derivative there is a
            // convention (the comparison with dual numbers above still holds there).
            let h = 1e-5;
            let forward = (-3.0 * at(0.0) + 4.0 * at(h) - at(2.0 * h)) / (2.0 * h);
            let backward = (3.0 * at(0.0) - 4.0 * at(-h) + at(-2.0 * h)) / (2.0 * h);
            if rel(f1, f2) <= 1e-9 && rel(forward, backward) <= 1e-6 && !tie(&d, root, &vals) {
                // Rounding in the stencil is about ε·|y|/h; allow for it on top of 1e-9.
                let rounding = 10.0 * f64::EPSILON * y.abs() / 5e-5;
                prop_assert!(
                    (sym - f2).abs() <= 1e-9 * sym.abs().max(f2.abs()).max(1.0) + rounding,
                    "d/d{var:?}: symbolic {sym} vs finite differences {f2}"
                );
            }
        }
    }
}

fn expand_str(args: &str, item: &str) -> String {
    let tokens = crate::expand(args.parse().unwrap(), item.parse().unwrap());
    prettyplease::unparse(&syn::parse2::<syn::File>(tokens).expect("the expansion parses"))
}

#[test]
fn expansion_bellec_lif() {
    insta::assert_snapshot!(expand_str(
        "",
        r#"
        pub mod lif {
            pub struct BellecLif {
                #[param(default = 0.9)] pub alpha: f64,
                #[param(default = 0.6)] pub v_th: f64,
                #[param(default = 0.3)] pub gamma: f64,
                #[state(init = 0.0)] v: f64,
                #[input] i: f64,
            }
            fn step() {
                let psi = triangle(gamma / v_th, v_th);
                let z_prev = detach(spike(v - v_th, psi));
                let v_next = alpha * v + i - z_prev * v_th;
                Next { v: v_next, spike: spike(v_next - v_th, psi) }
            }
        }
        "#
    ));
}

#[test]
fn expansion_alif_with_learnable_threshold() {
    insta::assert_snapshot!(expand_str(
        "surrogate = fast_sigmoid(10.0)",
        r#"
        pub mod alif {
            pub struct Alif {
                #[param(default = 0.9)] pub alpha: f64,
                #[param(default = 0.97)] pub rho: f64,
                #[param(default = 1.7)] pub beta: f64,
                #[param(default = 0.6, learnable)] pub v_th: f64,
                #[state(init = 0.0)] v: f64,
                #[state(init = 0.0)] a: f64,
                #[input] i: f64,
            }
            fn step() {
                let z_prev = spike(v - v_th - beta * a);
                let v_next = alpha * v + i - detach(z_prev) * v_th;
                let a_next = rho * a + z_prev;
                Next { v: v_next, a: a_next, spike: spike(v_next - v_th - beta * a_next) }
            }
        }
        "#
    ));
}
