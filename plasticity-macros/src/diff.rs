//! Phase 3: symbolic forward-mode differentiation on the DAG.
//!
//! For each independent variable (a previous state, an input port, a learnable parameter)
//! the derivative of every node is built as new DAG nodes, in evaluation order. Simplification
//! at construction turns structurally zero derivatives into the constant 0, which is what the
//! sparsity analysis reads. `spike` differentiates to its surrogate; `detach` to zero;
//! `if`/`else`, `min`, `max`, `clamp` and `abs` differentiate piecewise, with the branch
//! decided at run time.

use std::collections::HashMap;

use crate::dag::{CmpOp, Dag, NodeId, Op, Var};

/// d(root)/d(var) for each root, in the order of `roots`.
pub fn derivatives(dag: &mut Dag, roots: &[NodeId], var: Var) -> Vec<NodeId> {
    let order = dag.reachable(roots);
    let mut d: HashMap<NodeId, NodeId> = HashMap::new();
    for id in order {
        let node = dag.node(id).clone();
        let span = node.span;
        let zero = dag.constant(0.0, span);
        let g = |x: NodeId| *d.get(&x).unwrap_or(&zero);
        let dv = match node.op {
            Op::Const(_) => zero,
            Op::Var(v) => {
                if v == var {
                    dag.constant(1.0, span)
                } else {
                    zero
                }
            }
            Op::Add(a, b) => dag.make(Op::Add(g(a), g(b)), span),
            Op::Sub(a, b) => dag.make(Op::Sub(g(a), g(b)), span),
            Op::Mul(a, b) => {
                let l = dag.make(Op::Mul(g(a), b), span);
                let r = dag.make(Op::Mul(a, g(b)), span);
                dag.make(Op::Add(l, r), span)
            }
            Op::Div(a, b) => {
                // (a/b)' = (a' - (a/b)·b') / b
                let q = dag.make(Op::Mul(id, g(b)), span);
                let num = dag.make(Op::Sub(g(a), q), span);
                dag.make(Op::Div(num, b), span)
            }
            Op::Neg(a) => dag.make(Op::Neg(g(a)), span),
            Op::Exp(a) => dag.make(Op::Mul(id, g(a)), span),
            Op::Ln(a) => dag.make(Op::Div(g(a), a), span),
            Op::Sqrt(a) => {
                let two = dag.constant(2.0, span);
                let den = dag.make(Op::Mul(two, id), span);
                dag.make(Op::Div(g(a), den), span)
            }
            Op::Powi(a, n) => {
                let nn = dag.constant(n as f64, span);
                let p = dag.make(Op::Powi(a, n - 1), span);
                let f = dag.make(Op::Mul(nn, p), span);
                dag.make(Op::Mul(f, g(a)), span)
            }
            Op::Powf(a, b) => {
                // (a^b)' = a^b · (b' ln a + b a'/a)
                let t1 = if dag.is_zero(g(b)) {
                    zero
                } else {
                    let ln = dag.make(Op::Ln(a), span);
                    dag.make(Op::Mul(g(b), ln), span)
                };
                let t2 = if dag.is_zero(g(a)) {
                    zero
                } else {
                    let ba = dag.make(Op::Mul(b, g(a)), span);
                    dag.make(Op::Div(ba, a), span)
                };
                let s = dag.make(Op::Add(t1, t2), span);
                dag.make(Op::Mul(id, s), span)
            }
            Op::Abs(a) => {
                if dag.is_zero(g(a)) {
                    zero
                } else {
                    let sg = dag.make(Op::Signum(a), span);
                    dag.make(Op::Mul(sg, g(a)), span)
                }
            }
            Op::Signum(_) | Op::Detach(_) => zero,
            Op::Tanh(a) => {
                let one = dag.constant(1.0, span);
                let sq = dag.make(Op::Mul(id, id), span);
                let f = dag.make(Op::Sub(one, sq), span);
                dag.make(Op::Mul(f, g(a)), span)
            }
            Op::Sin(a) => {
                let c = dag.make(Op::Cos(a), span);
                dag.make(Op::Mul(c, g(a)), span)
            }
            Op::Cos(a) => {
                let s = dag.make(Op::Sin(a), span);
                let ns = dag.make(Op::Neg(s), span);
                dag.make(Op::Mul(ns, g(a)), span)
            }
            Op::Sigmoid(a) => {
                let one = dag.constant(1.0, span);
                let om = dag.make(Op::Sub(one, id), span);
                let f = dag.make(Op::Mul(id, om), span);
                dag.make(Op::Mul(f, g(a)), span)
            }
            // Same tie-breaking as `Real::min`/`max`: the first operand unless the second wins.
            Op::Min(a, b) => {
                let c = dag.make(Op::Cmp(CmpOp::Lt, b, a), span);
                dag.make(Op::Select(c, g(b), g(a)), span)
            }
            Op::Max(a, b) => {
                let c = dag.make(Op::Cmp(CmpOp::Gt, b, a), span);
                dag.make(Op::Select(c, g(b), g(a)), span)
            }
            Op::Clamp(x, lo, hi) => {
                let below = dag.make(Op::Cmp(CmpOp::Lt, x, lo), span);
                let above = dag.make(Op::Cmp(CmpOp::Gt, x, hi), span);
                let inner = dag.make(Op::Select(above, g(hi), g(x)), span);
                dag.make(Op::Select(below, g(lo), inner), span)
            }
            Op::Spike(x, s) => {
                if dag.is_zero(g(x)) {
                    zero
                } else {
                    let psi = dag.make(Op::SurrogateGrad(x, s), span);
                    dag.make(Op::Mul(psi, g(x)), span)
                }
            }
            // ψ is used only as a first derivative: its own derivative is never needed.
            Op::SurrogateGrad(..) => zero,
            Op::Select(c, a, b) => dag.make(Op::Select(c, g(a), g(b)), span),
            Op::Cmp(..) | Op::And(..) | Op::Or(..) | Op::Not(..) => zero,
        };
        d.insert(id, dv);
    }
    roots
        .iter()
        .map(|r| *d.get(r).expect("every root is reachable"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::Span;

    #[test]
    fn product_rule_and_zero_structure() {
        let s = Span::call_site();
        let mut dag = Dag::default();
        let v = dag.var(Var::State(0), s);
        let a = dag.var(Var::Param(0), s);
        let i = dag.var(Var::Input(0), s);
        let av = dag.make(Op::Mul(a, v), s);
        let next = dag.make(Op::Add(av, i), s);
        let dv = derivatives(&mut dag, &[next], Var::State(0));
        assert_eq!(dv, vec![a], "d(a v + i)/dv is the parameter node itself");
        let di = derivatives(&mut dag, &[next], Var::Input(0));
        assert_eq!(dag.constant_value(di[0]), Some(1.0));
        let dother = derivatives(&mut dag, &[next], Var::State(1));
        assert!(dag.is_zero(dother[0]));
    }

    #[test]
    fn detach_cuts_the_path() {
        let s = Span::call_site();
        let mut dag = Dag::default();
        let v = dag.var(Var::State(0), s);
        let det = dag.make(Op::Detach(v), s);
        let out = dag.make(Op::Mul(det, v), s);
        let d = derivatives(&mut dag, &[out], Var::State(0));
        assert_eq!(d[0], det, "only the undetached factor is differentiated");
    }
}
