//! The expression DAG: a flat arena in evaluation order, hash-consed so that equal
//! subexpressions are one node, with constant folding and identity simplification at
//! construction. Every node remembers the span of the user code it came from.

use std::collections::HashMap;

use proc_macro2::Span;

/// Index of a node in the arena. Operands always have smaller ids than their users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A surrogate family, as written in `spike(x, family(args..))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SurrogateKind {
    Triangle,
    FastSigmoid,
    Sigmoid,
    Arctan,
    Gaussian,
    Exponential,
}

impl SurrogateKind {
    pub const ALL: [(&'static str, SurrogateKind, &'static [&'static str]); 6] = [
        ("triangle", SurrogateKind::Triangle, &["height", "width"]),
        ("fast_sigmoid", SurrogateKind::FastSigmoid, &["slope"]),
        ("sigmoid", SurrogateKind::Sigmoid, &["slope"]),
        ("arctan", SurrogateKind::Arctan, &["alpha"]),
        ("gaussian", SurrogateKind::Gaussian, &["sigma"]),
        ("exponential", SurrogateKind::Exponential, &["height", "slope"]),
    ];

    pub fn lookup(name: &str) -> Option<(SurrogateKind, &'static [&'static str])> {
        Self::ALL.iter().find(|(n, _, _)| *n == name).map(|(_, k, a)| (*k, *a))
    }

    pub fn arg_names(self) -> &'static [&'static str] {
        Self::ALL
            .iter()
            .find(|(_, k, _)| *k == self)
            .map(|(_, _, a)| *a)
            .unwrap_or(&[])
    }

    pub fn variant(self) -> &'static str {
        match self {
            SurrogateKind::Triangle => "Triangle",
            SurrogateKind::FastSigmoid => "FastSigmoid",
            SurrogateKind::Sigmoid => "Sigmoid",
            SurrogateKind::Arctan => "Arctan",
            SurrogateKind::Gaussian => "Gaussian",
            SurrogateKind::Exponential => "Exponential",
        }
    }
}

/// A surrogate with its argument nodes (unused trailing slots repeat the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Surrogate {
    pub kind: SurrogateKind,
    pub args: [NodeId; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    fn eval(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// Where a leaf value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Var {
    /// A fixed (not learnable) parameter.
    Param(usize),
    /// A learnable parameter (per neuron).
    Learn(usize),
    /// A state variable's previous value.
    State(usize),
    /// An input port.
    Input(usize),
}

/// One operation. Operands are node ids; floating constants are stored as bits so the
/// node can be hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Const(u64),
    Var(Var),
    Add(NodeId, NodeId),
    Sub(NodeId, NodeId),
    Mul(NodeId, NodeId),
    Div(NodeId, NodeId),
    Neg(NodeId),
    Exp(NodeId),
    Ln(NodeId),
    Sqrt(NodeId),
    Powi(NodeId, i32),
    Powf(NodeId, NodeId),
    Abs(NodeId),
    Signum(NodeId),
    Tanh(NodeId),
    Sin(NodeId),
    Cos(NodeId),
    Sigmoid(NodeId),
    Min(NodeId, NodeId),
    Max(NodeId, NodeId),
    Clamp(NodeId, NodeId, NodeId),
    /// Heaviside spike; its derivative is the surrogate.
    Spike(NodeId, Surrogate),
    /// The surrogate derivative ψ(x).
    SurrogateGrad(NodeId, Surrogate),
    /// Stop-gradient.
    Detach(NodeId),
    /// Boolean: comparison.
    Cmp(CmpOp, NodeId, NodeId),
    /// Boolean connectives.
    And(NodeId, NodeId),
    Or(NodeId, NodeId),
    Not(NodeId),
    /// `if c { a } else { b }`.
    Select(NodeId, NodeId, NodeId),
}

impl Op {
    /// The operands, in order.
    pub fn operands(&self) -> Vec<NodeId> {
        use Op::*;
        match *self {
            Const(_) | Var(_) => vec![],
            Neg(a)
            | Exp(a)
            | Ln(a)
            | Sqrt(a)
            | Powi(a, _)
            | Abs(a)
            | Signum(a)
            | Tanh(a)
            | Sin(a)
            | Cos(a)
            | Sigmoid(a)
            | Detach(a)
            | Not(a) => vec![a],
            Add(a, b)
            | Sub(a, b)
            | Mul(a, b)
            | Div(a, b)
            | Powf(a, b)
            | Min(a, b)
            | Max(a, b)
            | Cmp(_, a, b)
            | And(a, b)
            | Or(a, b) => vec![a, b],
            Clamp(a, b, c) | Select(a, b, c) => vec![a, b, c],
            Spike(x, s) | SurrogateGrad(x, s) => {
                let mut v = vec![x, s.args[0]];
                if s.kind.arg_names().len() > 1 {
                    v.push(s.args[1]);
                }
                v
            }
        }
    }
}

/// What a node's value depends on, from least to most dynamic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A literal.
    Literal,
    /// Literals and fixed parameters only: a per-layer constant.
    Fixed,
    /// State, inputs, learnable parameters or a spike: per neuron and step.
    Dynamic,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub span: Span,
    pub class: Class,
}

/// The arena.
#[derive(Default)]
pub struct Dag {
    nodes: Vec<Node>,
    index: HashMap<Op, NodeId>,
}

fn c(x: f64) -> Op {
    // Normalise -0.0 so that 0 and -0 are one node.
    Op::Const(if x == 0.0 { 0.0f64.to_bits() } else { x.to_bits() })
}

impl Dag {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn constant_value(&self, id: NodeId) -> Option<f64> {
        match self.node(id).op {
            Op::Const(bits) => Some(f64::from_bits(bits)),
            _ => None,
        }
    }

    pub fn is_zero(&self, id: NodeId) -> bool {
        self.constant_value(id) == Some(0.0)
    }

    pub fn class(&self, id: NodeId) -> Class {
        self.node(id).class
    }

    /// Inserts an operation exactly as given (after hash-consing), no simplification.
    fn intern(&mut self, op: Op, span: Span) -> NodeId {
        if let Some(&id) = self.index.get(&op) {
            return id;
        }
        let class = match op {
            Op::Const(_) => Class::Literal,
            Op::Var(crate::dag::Var::Param(_)) => Class::Fixed,
            Op::Var(_) | Op::Spike(..) => Class::Dynamic,
            _ => op
                .operands()
                .iter()
                .map(|&o| self.class(o))
                .max()
                .unwrap_or(Class::Literal)
                .max(Class::Literal),
        };
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node { op, span, class });
        self.index.insert(op, id);
        id
    }

    pub fn constant(&mut self, x: f64, span: Span) -> NodeId {
        self.intern(c(x), span)
    }

    pub fn var(&mut self, v: Var, span: Span) -> NodeId {
        self.intern(Op::Var(v), span)
    }

    /// Builds `op`, folding constants and applying identities first.
    pub fn make(&mut self, op: Op, span: Span) -> NodeId {
        if let Some(folded) = self.simplify(op, span) {
            return folded;
        }
        self.intern(op, span)
    }

    fn simplify(&mut self, op: Op, span: Span) -> Option<NodeId> {
        use Op::*;
        let k = |s: &Self, id: NodeId| s.constant_value(id);
        let num = |s: &mut Self, x: f64| Some(s.constant(x, span));
        match op {
            Add(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => num(self, x + y),
                (Some(0.0), _) => Some(b),
                (_, Some(0.0)) => Some(a),
                _ => {
                    if let Neg(nb) = self.node(b).op {
                        return Some(self.make(Sub(a, nb), span));
                    }
                    None
                }
            },
            Sub(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => num(self, x - y),
                (Some(0.0), _) => Some(self.make(Neg(b), span)),
                (_, Some(0.0)) => Some(a),
                _ if a == b => num(self, 0.0),
                _ => None,
            },
            Mul(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => num(self, x * y),
                (Some(x), _) | (_, Some(x)) if x == 0.0 => num(self, 0.0),
                (Some(1.0), _) => Some(b),
                (_, Some(1.0)) => Some(a),
                (Some(-1.0), _) => Some(self.make(Neg(b), span)),
                (_, Some(-1.0)) => Some(self.make(Neg(a), span)),
                _ => None,
            },
            Div(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) if y != 0.0 => num(self, x / y),
                (Some(0.0), _) => num(self, 0.0),
                (_, Some(1.0)) => Some(a),
                _ => None,
            },
            Neg(a) => match (k(self, a), self.node(a).op) {
                (Some(x), _) => num(self, -x),
                (_, Neg(inner)) => Some(inner),
                _ => None,
            },
            Exp(a) => k(self, a).and_then(|x| num(self, x.exp())),
            Ln(a) => k(self, a).filter(|x| *x > 0.0).and_then(|x| num(self, x.ln())),
            Sqrt(a) => k(self, a).filter(|x| *x >= 0.0).and_then(|x| num(self, x.sqrt())),
            Powi(a, n) => {
                if n == 0 {
                    return num(self, 1.0);
                }
                if n == 1 {
                    return Some(a);
                }
                k(self, a).and_then(|x| num(self, x.powi(n)))
            }
            Powf(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => num(self, x.powf(y)),
                (_, Some(1.0)) => Some(a),
                (_, Some(0.0)) => num(self, 1.0),
                _ => None,
            },
            Abs(a) => k(self, a).and_then(|x| num(self, x.abs())),
            Signum(a) => k(self, a).and_then(|x| {
                num(
                    self,
                    if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        0.0
                    },
                )
            }),
            Tanh(a) => k(self, a).and_then(|x| num(self, x.tanh())),
            Sin(a) => k(self, a).and_then(|x| num(self, x.sin())),
            Cos(a) => k(self, a).and_then(|x| num(self, x.cos())),
            Sigmoid(a) => k(self, a).and_then(|x| num(self, 1.0 / (1.0 + (-x).exp()))),
            Min(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => num(self, if y < x { y } else { x }),
                _ if a == b => Some(a),
                _ => None,
            },
            Max(a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => num(self, if y > x { y } else { x }),
                _ if a == b => Some(a),
                _ => None,
            },
            Clamp(x, lo, hi) => match (k(self, x), k(self, lo), k(self, hi)) {
                (Some(v), Some(l), Some(h)) => num(self, v.max(l).min(h)),
                _ => None,
            },
            Detach(a) => {
                if self.class(a) != Class::Dynamic {
                    Some(a)
                } else {
                    None
                }
            }
            Cmp(o, a, b) => match (k(self, a), k(self, b)) {
                (Some(x), Some(y)) => Some(self.boolean(o.eval(x, y), span)),
                _ => None,
            },
            And(a, b) => match (self.bool_value(a), self.bool_value(b)) {
                (Some(false), _) | (_, Some(false)) => Some(self.boolean(false, span)),
                (Some(true), _) => Some(b),
                (_, Some(true)) => Some(a),
                _ => None,
            },
            Or(a, b) => match (self.bool_value(a), self.bool_value(b)) {
                (Some(true), _) | (_, Some(true)) => Some(self.boolean(true, span)),
                (Some(false), _) => Some(b),
                (_, Some(false)) => Some(a),
                _ => None,
            },
            Not(a) => self.bool_value(a).map(|v| self.boolean(!v, span)),
            Select(cnd, a, b) => match self.bool_value(cnd) {
                Some(true) => Some(a),
                Some(false) => Some(b),
                None if a == b => Some(a),
                None => None,
            },
            SurrogateGrad(..) | Spike(..) | Const(_) | Var(_) => None,
        }
    }

    /// Booleans are encoded as the comparison `0 == 0` / `0 != 0` of constants.
    fn boolean(&mut self, v: bool, span: Span) -> NodeId {
        let z = self.constant(0.0, span);
        self.intern(Op::Cmp(if v { CmpOp::Eq } else { CmpOp::Ne }, z, z), span)
    }

    fn bool_value(&self, id: NodeId) -> Option<bool> {
        match self.node(id).op {
            Op::Cmp(o, a, b) => match (self.constant_value(a), self.constant_value(b)) {
                (Some(x), Some(y)) => Some(o.eval(x, y)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The ids reachable from `roots`, in evaluation (ascending) order.
    pub fn reachable(&self, roots: &[NodeId]) -> Vec<NodeId> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut seen[id.0 as usize], true) {
                continue;
            }
            stack.extend(self.node(id).op.operands());
        }
        (0..self.nodes.len() as u32)
            .map(NodeId)
            .filter(|id| seen[id.0 as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Span {
        Span::call_site()
    }

    #[test]
    fn equal_subexpressions_are_one_node() {
        let mut d = Dag::default();
        let v = d.var(Var::State(0), s());
        let a = d.var(Var::Param(0), s());
        let m1 = d.make(Op::Mul(a, v), s());
        let m2 = d.make(Op::Mul(a, v), s());
        assert_eq!(m1, m2);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn identities_and_folding() {
        let mut d = Dag::default();
        let v = d.var(Var::State(0), s());
        let zero = d.constant(0.0, s());
        let one = d.constant(1.0, s());
        assert_eq!(d.make(Op::Add(v, zero), s()), v);
        assert_eq!(d.make(Op::Mul(one, v), s()), v);
        let prod = d.make(Op::Mul(v, zero), s());
        assert!(d.is_zero(prod));
        let n = d.make(Op::Neg(v), s());
        assert_eq!(d.make(Op::Neg(n), s()), v);
        let two = d.constant(2.0, s());
        let three = d.constant(3.0, s());
        let six = d.make(Op::Mul(two, three), s());
        assert_eq!(d.constant_value(six), Some(6.0));
        let neg_zero = d.constant(-0.0, s());
        assert_eq!(neg_zero, zero);
    }

    #[test]
    fn classes_propagate() {
        let mut d = Dag::default();
        let p = d.var(Var::Param(0), s());
        let l = d.var(Var::Learn(0), s());
        let two = d.constant(2.0, s());
        let pp = d.make(Op::Mul(p, two), s());
        assert_eq!(d.class(pp), Class::Fixed);
        let pl = d.make(Op::Mul(p, l), s());
        assert_eq!(d.class(pl), Class::Dynamic);
        let det = d.make(Op::Detach(pp), s());
        assert_eq!(det, pp, "detaching a constant is the constant");
    }

    #[test]
    fn constant_conditions_pick_a_branch() {
        let mut d = Dag::default();
        let a = d.var(Var::State(0), s());
        let b = d.var(Var::State(1), s());
        let one = d.constant(1.0, s());
        let two = d.constant(2.0, s());
        let cond = d.make(Op::Cmp(CmpOp::Lt, one, two), s());
        assert_eq!(d.make(Op::Select(cond, a, b), s()), a);
        let dyn_cond = d.make(Op::Cmp(CmpOp::Lt, a, b), s());
        assert_eq!(d.make(Op::Select(dyn_cond, a, a), s()), a);
    }
}
