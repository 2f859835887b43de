//! Phase 4: sparsity analysis. Every entry of the partials `J, Jz, B, Bz, P, Pz` is
//! classified as structurally zero, constant (fixed parameters only) or dynamic; from that
//! pattern each state variable's eligibility vector, per input port, is found absent,
//! factorised (one value per presynaptic neuron) or per synapse.

use std::collections::HashMap;

use crate::dag::{Class, Dag, NodeId, Var};
use crate::diff::derivatives;
use crate::lower::Lowered;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matrix {
    J,
    Jz,
    B,
    Bz,
    P,
    Pz,
}

impl Matrix {
    pub fn name(self) -> &'static str {
        match self {
            Matrix::J => "J",
            Matrix::Jz => "Jz",
            Matrix::B => "B",
            Matrix::Bz => "Bz",
            Matrix::P => "P",
            Matrix::Pz => "Pz",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Constant(usize),
    Dynamic(usize),
}

#[derive(Clone, Copy, Debug)]
pub struct EntryInfo {
    pub matrix: Matrix,
    pub row: usize,
    pub col: usize,
    pub node: NodeId,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Absent,
    Factorised(usize),
    PerSynapse(usize),
}

pub struct PortInfo {
    pub rows: Vec<Layout>,
    pub factorised: usize,
    pub per_synapse: usize,
}

pub struct Analysis {
    pub k: usize,
    pub p: usize,
    pub q: usize,
    pub entries: Vec<EntryInfo>,
    /// Node of each `consts` slot.
    pub consts: Vec<NodeId>,
    /// Node of each `dynv` slot.
    pub dynamic: Vec<NodeId>,
    pub ports: Vec<PortInfo>,
    /// `∂s0_r/∂θ_q` of the initial state, parameter-major (`[q·k]`): nonzero when a
    /// learnable parameter appears in a `#[state(init = ..)]`.
    pub init_partials: Vec<NodeId>,
}

impl Analysis {
    pub fn get(&self, m: Matrix, row: usize, col: usize) -> Option<&EntryInfo> {
        self.entries
            .iter()
            .find(|e| e.matrix == m && e.row == row && e.col == col)
    }

    fn is_dynamic(&self, m: Matrix, row: usize, col: usize) -> bool {
        matches!(
            self.get(m, row, col),
            Some(EntryInfo {
                kind: Kind::Dynamic(_),
                ..
            })
        )
    }
}

pub fn analyse(low: &mut Lowered, k: usize, p: usize, q: usize) -> Analysis {
    let init = low.init.clone();
    let init_partials: Vec<NodeId> = (0..q)
        .flat_map(|col| derivatives(&mut low.dag, &init, Var::Learn(col)))
        .collect();
    let mut roots = low.next.clone();
    roots.push(low.spike);
    let mut entries = Vec::new();
    let mut consts: Vec<NodeId> = Vec::new();
    let mut dynamic: Vec<NodeId> = Vec::new();
    let mut slot: HashMap<NodeId, Kind> = HashMap::new();
    type Block = (Matrix, Matrix, usize, fn(usize) -> Var);
    let blocks: [Block; 3] = [
        (Matrix::J, Matrix::Jz, k, Var::State),
        (Matrix::B, Matrix::Bz, p, Var::Input),
        (Matrix::P, Matrix::Pz, q, Var::Learn),
    ];
    for (m, mz, cols, var) in blocks {
        for col in 0..cols {
            let ds = derivatives(&mut low.dag, &roots, var(col));
            for (r, &node) in ds.iter().enumerate() {
                if low.dag.is_zero(node) {
                    continue;
                }
                let kind = *slot.entry(node).or_insert_with(|| {
                    if low.dag.class(node) == Class::Dynamic {
                        dynamic.push(node);
                        Kind::Dynamic(dynamic.len() - 1)
                    } else {
                        consts.push(node);
                        Kind::Constant(consts.len() - 1)
                    }
                });
                let (matrix, row) = if r < k { (m, r) } else { (mz, 0) };
                entries.push(EntryInfo {
                    matrix,
                    row,
                    col,
                    node,
                    kind,
                });
            }
        }
    }
    let mut a = Analysis {
        k,
        p,
        q,
        entries,
        consts,
        dynamic,
        ports: Vec::new(),
        init_partials,
    };
    a.ports = (0..p).map(|port| port_layout(&a, port)).collect();
    a
}

/// Reachability, then the largest set of rows whose recursion involves only constants and
/// other factorised rows.
fn port_layout(a: &Analysis, port: usize) -> PortInfo {
    let k = a.k;
    let mut reach: Vec<bool> = (0..k).map(|r| a.get(Matrix::B, r, port).is_some()).collect();
    loop {
        let mut changed = false;
        for r in 0..k {
            if !reach[r] && (0..k).any(|c| reach[c] && a.get(Matrix::J, r, c).is_some()) {
                reach[r] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut fact = reach.clone();
    loop {
        let mut changed = false;
        for r in 0..k {
            if !fact[r] {
                continue;
            }
            let dyn_input = a.is_dynamic(Matrix::B, r, port);
            let bad_dep = (0..k)
                .any(|c| reach[c] && a.get(Matrix::J, r, c).is_some() && (a.is_dynamic(Matrix::J, r, c) || !fact[c]));
            if dyn_input || bad_dep {
                fact[r] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows = Vec::with_capacity(k);
    let (mut nf, mut ns) = (0, 0);
    for r in 0..k {
        rows.push(if !reach[r] {
            Layout::Absent
        } else if fact[r] {
            nf += 1;
            Layout::Factorised(nf - 1)
        } else {
            ns += 1;
            Layout::PerSynapse(ns - 1)
        });
    }
    PortInfo {
        rows,
        factorised: nf,
        per_synapse: ns,
    }
}

/// A readable formula for a node, in full, for documentation (`describe()`, docs).
pub fn formula(dag: &Dag, id: NodeId, names: &dyn Fn(Var) -> String) -> String {
    use crate::dag::Op::*;
    let f = |x: NodeId| formula(dag, x, names);
    match dag.node(id).op {
        Const(b) => {
            let v = f64::from_bits(b);
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{v:.1}")
            } else {
                format!("{v}")
            }
        }
        Var(v) => names(v),
        Add(a, b) => format!("({} + {})", f(a), f(b)),
        Sub(a, b) => format!("({} - {})", f(a), f(b)),
        Mul(a, b) => format!("{}·{}", f(a), f(b)),
        Div(a, b) => format!("{}/{}", f(a), f(b)),
        Neg(a) => format!("-{}", f(a)),
        Exp(a) => format!("exp({})", f(a)),
        Ln(a) => format!("ln({})", f(a)),
        Sqrt(a) => format!("sqrt({})", f(a)),
        Powi(a, n) => format!("{}^{n}", f(a)),
        Powf(a, b) => format!("{}^{}", f(a), f(b)),
        Abs(a) => format!("|{}|", f(a)),
        Signum(a) => format!("sign({})", f(a)),
        Tanh(a) => format!("tanh({})", f(a)),
        Sin(a) => format!("sin({})", f(a)),
        Cos(a) => format!("cos({})", f(a)),
        Sigmoid(a) => format!("σ({})", f(a)),
        Min(a, b) => format!("min({}, {})", f(a), f(b)),
        Max(a, b) => format!("max({}, {})", f(a), f(b)),
        Clamp(a, b, c) => format!("clamp({}, {}, {})", f(a), f(b), f(c)),
        Spike(a, _) => format!("H({})", f(a)),
        SurrogateGrad(a, _) => format!("ψ({})", f(a)),
        Detach(a) => format!("detach({})", f(a)),
        Cmp(o, a, b) => {
            let s = match o {
                crate::dag::CmpOp::Lt => "<",
                crate::dag::CmpOp::Le => "<=",
                crate::dag::CmpOp::Gt => ">",
                crate::dag::CmpOp::Ge => ">=",
                crate::dag::CmpOp::Eq => "==",
                crate::dag::CmpOp::Ne => "!=",
            };
            format!("{} {s} {}", f(a), f(b))
        }
        And(a, b) => format!("({} && {})", f(a), f(b)),
        Or(a, b) => format!("({} || {})", f(a), f(b)),
        Not(a) => format!("!({})", f(a)),
        Select(c, a, b) => format!("(if {} {{ {} }} else {{ {} }})", f(c), f(a), f(b)),
    }
}
