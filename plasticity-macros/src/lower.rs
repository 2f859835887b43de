//! Phase 2: the step body (syn) → expression DAG, with name resolution and every check of
//! the language. Errors are collected; lowering continues past them so the user sees all.

use std::collections::HashMap;

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{BinOp, Block, Expr, Lit, Pat, Stmt, UnOp};

use crate::ctxt::Ctxt;
use crate::dag::{CmpOp, Dag, NodeId, Op, Surrogate, SurrogateKind, Var};
use crate::parse::ModelDef;
use crate::symbol;

fn surrogate_list() -> String {
    SurrogateKind::ALL
        .iter()
        .map(|(n, _, a)| format!("{n}({})", a.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lowered model: one DAG holding the step, its outputs and the initial values.
pub struct Lowered {
    pub dag: Dag,
    /// Next value of each state variable.
    pub next: Vec<NodeId>,
    /// The output `z`.
    pub spike: NodeId,
    /// Initial value of each state variable (depends on parameters only, learnable ones
    /// included).
    pub init: Vec<NodeId>,
    /// The user's `let` name of a node (the first binding of it), for readable code.
    pub names: HashMap<NodeId, String>,
}

#[derive(Clone, Copy)]
enum Val {
    Num(NodeId),
    Bool(NodeId),
    /// A surrogate, as produced by `triangle(..)` etc.: usable only as `spike`'s second
    /// argument, directly or through a `let` binding.
    Surr(Surrogate),
}

impl Val {
    fn what(&self) -> &'static str {
        match self {
            Val::Num(_) => "a number",
            Val::Bool(_) => "a condition",
            Val::Surr(_) => "a surrogate",
        }
    }
}

struct Lowerer<'a> {
    cx: &'a mut Ctxt,
    dag: Dag,
    /// Let bindings; `None` marks a binding whose value had an error, so that its uses
    /// report nothing more.
    scopes: Vec<HashMap<String, Option<Val>>>,
    globals: HashMap<String, NodeId>,
    default_surrogate: Option<Surrogate>,
    known_names: Vec<String>,
    /// Lowering initial values or the default surrogate (parameters only).
    in_init: bool,
    names: HashMap<NodeId, String>,
}

impl<'a> Lowerer<'a> {
    /// `Some(binding)` when the name is known (`binding` is `None` if it is poisoned).
    fn lookup(&self, name: &str) -> Option<Option<Val>> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name).copied())
            .or_else(|| self.globals.get(name).map(|&id| Some(Val::Num(id))))
    }

    fn num(&mut self, e: &Expr) -> Option<NodeId> {
        match self.expr(e)? {
            Val::Num(n) => Some(n),
            Val::Bool(_) => {
                self.cx.error_spanned_by(
                    e,
                    "expected a number, found a condition; use it in `if cond { a } else { b }`",
                );
                None
            }
            Val::Surr(_) => {
                self.cx.error_spanned_by(
                    e,
                    "expected a number, found a surrogate; a surrogate is only the second argument of `spike(x, surrogate)`",
                );
                None
            }
        }
    }

    fn cond(&mut self, e: &Expr) -> Option<NodeId> {
        match self.expr(e)? {
            Val::Bool(n) => Some(n),
            other => {
                self.cx.error_spanned_by(
                    e,
                    format!(
                        "expected a condition (a comparison such as `v > v_th`), found {}",
                        other.what()
                    ),
                );
                None
            }
        }
    }

    fn make(&mut self, op: Op, span: Span) -> NodeId {
        self.dag.make(op, span)
    }

    fn expr(&mut self, e: &Expr) -> Option<Val> {
        let span = e.span();
        match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Float(f) => match f.base10_parse::<f64>() {
                    Ok(v) if f.suffix().is_empty() || f.suffix() == "f64" || f.suffix() == "f32" => {
                        Some(Val::Num(self.dag.constant(v, span)))
                    }
                    _ => {
                        self.cx
                            .error_spanned_by(e, "unsupported literal suffix; write a plain float such as `0.5`");
                        None
                    }
                },
                Lit::Int(i) => {
                    self.cx.error_spanned_by(
                        e,
                        format!(
                            "integer literal `{}`: the model computes in floats, write `{}.0`",
                            i.base10_digits(),
                            i.base10_digits()
                        ),
                    );
                    None
                }
                _ => {
                    self.cx
                        .error_spanned_by(e, "only float literals are allowed in a neuron model");
                    None
                }
            },
            Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                let ident = p.path.get_ident().expect("checked above");
                let name = ident.to_string();
                match self.lookup(&name) {
                    Some(binding) => binding,
                    None => {
                        let known = if self.known_names.is_empty() {
                            "none".to_string()
                        } else {
                            self.known_names.join(", ")
                        };
                        let msg = if self.in_init {
                            format!(
                                "unknown name `{name}`: initial values and the default surrogate can use parameters only (parameters: {known})"
                            )
                        } else {
                            format!("unknown name `{name}`; known here: {known}")
                        };
                        self.cx.error_spanned_by(ident, msg);
                        None
                    }
                }
            }
            Expr::Paren(p) => self.expr(&p.expr),
            Expr::Group(g) => self.expr(&g.expr),
            Expr::Unary(u) => match u.op {
                UnOp::Neg(_) => {
                    let a = self.num(&u.expr)?;
                    Some(Val::Num(self.make(Op::Neg(a), span)))
                }
                UnOp::Not(_) => {
                    let a = self.cond(&u.expr)?;
                    Some(Val::Bool(self.make(Op::Not(a), span)))
                }
                _ => {
                    self.cx
                        .error_spanned_by(e, format!("dereference is not supported; {}", symbol::allowed()));
                    None
                }
            },
            Expr::Binary(b) => self.binary(b, span),
            Expr::Call(call) => self.call(call, span),
            Expr::MethodCall(m) => self.method(m, span),
            Expr::If(i) => self.if_expr(i, span),
            Expr::Block(b) if b.label.is_none() => self.block_value(&b.block),
            Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_) => {
                self.cx.error_spanned_by(
                    e,
                    "loops are not allowed in a neuron model: `step` is one time step of straight-line code; \
                     carry values across steps in a #[state] field",
                );
                None
            }
            Expr::Assign(_) => {
                self.cx.error_spanned_by(
                    e,
                    "assignment is not allowed: values are immutable; bind a new value with `let name = ...;`",
                );
                None
            }
            Expr::Field(f) => {
                self.cx.error_spanned_by(
                    e,
                    format!(
                        "field access is not supported: refer to parameters, states and inputs by name (`{}`)",
                        f.member.to_token_stream()
                    ),
                );
                None
            }
            Expr::Cast(_) => {
                self.cx
                    .error_spanned_by(e, "casts are not supported: every value is already a float");
                None
            }
            Expr::Macro(_) => {
                self.cx.error_spanned_by(
                    e,
                    format!("macros are not supported inside `step`; {}", symbol::allowed()),
                );
                None
            }
            _ => {
                self.cx.error_spanned_by(
                    e,
                    format!(
                        "this expression is not supported in a neuron model; {}",
                        symbol::allowed()
                    ),
                );
                None
            }
        }
    }

    fn binary(&mut self, b: &syn::ExprBinary, span: Span) -> Option<Val> {
        let arith = |op: &BinOp| -> Option<fn(NodeId, NodeId) -> Op> {
            Some(match op {
                BinOp::Add(_) => Op::Add,
                BinOp::Sub(_) => Op::Sub,
                BinOp::Mul(_) => Op::Mul,
                BinOp::Div(_) => Op::Div,
                _ => return None,
            })
        };
        let cmp = match b.op {
            BinOp::Lt(_) => Some(CmpOp::Lt),
            BinOp::Le(_) => Some(CmpOp::Le),
            BinOp::Gt(_) => Some(CmpOp::Gt),
            BinOp::Ge(_) => Some(CmpOp::Ge),
            BinOp::Eq(_) => Some(CmpOp::Eq),
            BinOp::Ne(_) => Some(CmpOp::Ne),
            _ => None,
        };
        if let Some(f) = arith(&b.op) {
            let (l, r) = (self.num(&b.left), self.num(&b.right));
            return Some(Val::Num(self.make(f(l?, r?), span)));
        }
        if let Some(c) = cmp {
            let (l, r) = (self.num(&b.left), self.num(&b.right));
            return Some(Val::Bool(self.make(Op::Cmp(c, l?, r?), span)));
        }
        match b.op {
            BinOp::And(_) | BinOp::Or(_) => {
                let (l, r) = (self.cond(&b.left), self.cond(&b.right));
                let op = if matches!(b.op, BinOp::And(_)) {
                    Op::And(l?, r?)
                } else {
                    Op::Or(l?, r?)
                };
                Some(Val::Bool(self.make(op, span)))
            }
            BinOp::AddAssign(_) | BinOp::SubAssign(_) | BinOp::MulAssign(_) | BinOp::DivAssign(_) => {
                self.cx.error_spanned_by(
                    b,
                    "compound assignment is not allowed: values are immutable; bind a new value with `let name = ...;`",
                );
                None
            }
            _ => {
                self.cx.error_spanned_by(
                    b.op,
                    "this operator is not supported; use `+ - * /`, comparisons, `&&` or `||`",
                );
                None
            }
        }
    }

    fn args(&mut self, args: &[&Expr]) -> Option<Vec<NodeId>> {
        let vals: Vec<Option<NodeId>> = args.iter().map(|a| self.num(a)).collect();
        vals.into_iter().collect()
    }

    fn arity(&mut self, what: &str, found: usize, expected: usize, span_of: &dyn ToTokens) -> bool {
        if found != expected {
            self.cx
                .error_spanned_by(span_of, format!("`{what}` takes {expected} argument(s), found {found}"));
            false
        } else {
            true
        }
    }

    /// Builds a math function applied to already-lowered operands: shared by the call
    /// syntax `exp(x)` and the method syntax `x.exp()`.
    fn math(&mut self, name: &str, all: &[&Expr], span: Span, site: &dyn ToTokens) -> Option<Val> {
        if let Some(f) = symbol::unary(name) {
            if !self.arity(name, all.len(), 1, site) {
                return None;
            }
            let a = self.num(all[0])?;
            return Some(Val::Num(self.make(f(a), span)));
        }
        match name {
            "powi" => {
                if !self.arity(name, all.len(), 2, site) {
                    return None;
                }
                let base = self.num(all[0]);
                let n = match all[1] {
                    Expr::Lit(syn::ExprLit { lit: Lit::Int(i), .. }) => i.base10_parse::<i32>().ok(),
                    Expr::Unary(syn::ExprUnary {
                        op: UnOp::Neg(_), expr, ..
                    }) => match &**expr {
                        Expr::Lit(syn::ExprLit { lit: Lit::Int(i), .. }) => i.base10_parse::<i32>().ok().map(|v| -v),
                        _ => None,
                    },
                    _ => None,
                };
                let Some(n) = n else {
                    self.cx.error_spanned_by(
                        all[1],
                        "the exponent of `powi` must be an integer literal such as `2`; use `powf` for a float exponent",
                    );
                    return None;
                };
                Some(Val::Num(self.make(Op::Powi(base?, n), span)))
            }
            "powf" | "min" | "max" => {
                if !self.arity(name, all.len(), 2, site) {
                    return None;
                }
                let v = self.args(all)?;
                let op = match name {
                    "powf" => Op::Powf(v[0], v[1]),
                    "min" => Op::Min(v[0], v[1]),
                    _ => Op::Max(v[0], v[1]),
                };
                Some(Val::Num(self.make(op, span)))
            }
            "clamp" => {
                if !self.arity(name, all.len(), 3, site) {
                    return None;
                }
                let v = self.args(all)?;
                Some(Val::Num(self.make(Op::Clamp(v[0], v[1], v[2]), span)))
            }
            "detach" => {
                if !self.arity(name, all.len(), 1, site) {
                    return None;
                }
                let a = self.num(all[0])?;
                Some(Val::Num(self.make(Op::Detach(a), span)))
            }
            "spike" => {
                if all.is_empty() || all.len() > 2 {
                    self.cx.error_spanned_by(
                        site,
                        "`spike` takes the argument and optionally a surrogate: `spike(x)` or `spike(x, fast_sigmoid(10.0))`",
                    );
                    return None;
                }
                let x = self.num(all[0]);
                let s = if all.len() == 2 {
                    self.surrogate(all[1])
                } else if let Some(s) = self.default_surrogate {
                    Some(s)
                } else {
                    self.cx.error_spanned_by(
                        site,
                        "`spike(x)` needs a surrogate derivative: write `spike(x, fast_sigmoid(10.0))` (or triangle, \
                         sigmoid, arctan, gaussian, exponential), or set a model default with \
                         #[neuron_model(surrogate = ...)]",
                    );
                    None
                };
                Some(Val::Num(self.make(Op::Spike(x?, s?), span)))
            }
            _ => {
                self.cx.error_spanned_by(
                    site,
                    format!(
                        "unsupported function `{name}`; the language has: {}",
                        symbol::function_list()
                    ),
                );
                None
            }
        }
    }

    /// `spike`'s second argument: a surrogate call or a name bound to one.
    fn surrogate(&mut self, e: &Expr) -> Option<Surrogate> {
        // In this position a call of a surrogate family is always the surrogate, including
        // `sigmoid(slope)`, which elsewhere is the logistic function.
        if let Expr::Call(call) = e
            && let Expr::Path(p) = &*call.func
            && let Some(name) = p.path.get_ident().map(|i| i.to_string())
        {
            if SurrogateKind::lookup(&name).is_some() {
                return match self.surrogate_call(&name, call)? {
                    Val::Surr(s) => Some(s),
                    _ => None,
                };
            }
            if !symbol::FUNCTIONS.contains(&name.as_str()) {
                self.cx.error_spanned_by(
                    &call.func,
                    format!("unknown surrogate `{name}`; surrogates: {}", surrogate_list()),
                );
                return None;
            }
        }
        match self.expr(e)? {
            Val::Surr(s) => Some(s),
            other => {
                self.cx.error_spanned_by(
                    e,
                    format!(
                        "expected a surrogate, found {}; surrogates: {}",
                        other.what(),
                        surrogate_list()
                    ),
                );
                None
            }
        }
    }

    /// `family(args..)`: builds a surrogate value.
    fn surrogate_call(&mut self, name: &str, call: &syn::ExprCall) -> Option<Val> {
        let (kind, arg_names) = SurrogateKind::lookup(name)?;
        let args: Vec<&Expr> = call.args.iter().collect();
        if args.len() != arg_names.len() {
            self.cx.error_spanned_by(
                call,
                format!(
                    "surrogate `{name}` takes {} argument(s): {name}({})",
                    arg_names.len(),
                    arg_names.join(", ")
                ),
            );
            return None;
        }
        let v = self.args(&args)?;
        Some(Val::Surr(Surrogate {
            kind,
            args: [v[0], *v.get(1).unwrap_or(&v[0])],
        }))
    }

    fn call(&mut self, call: &syn::ExprCall, span: Span) -> Option<Val> {
        let name = match &*call.func {
            Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                p.path.get_ident().expect("checked").to_string()
            }
            other => {
                self.cx.error_spanned_by(
                    other,
                    format!("only the built-in functions can be called: {}", symbol::function_list()),
                );
                return None;
            }
        };
        // `sigmoid(x)` outside `spike(.., here)` is the logistic function.
        if name != "sigmoid" && SurrogateKind::lookup(&name).is_some() {
            return self.surrogate_call(&name, call);
        }
        let args: Vec<&Expr> = call.args.iter().collect();
        self.math(&name, &args, span, &call.func)
    }

    fn method(&mut self, m: &syn::ExprMethodCall, span: Span) -> Option<Val> {
        let name = m.method.to_string();
        if matches!(name.as_str(), "spike" | "detach") || SurrogateKind::lookup(&name).is_some() && name != "sigmoid" {
            self.cx
                .error_spanned_by(&m.method, format!("`{name}` is called as a function: `{name}(x, ..)`"));
            return None;
        }
        if m.turbofish.is_some() {
            self.cx
                .error_spanned_by(&m.method, "generic arguments are not supported");
            return None;
        }
        let mut all: Vec<&Expr> = vec![&m.receiver];
        all.extend(m.args.iter());
        self.math(&name, &all, span, &m.method)
    }

    fn if_expr(&mut self, i: &syn::ExprIf, span: Span) -> Option<Val> {
        let cond = self.cond(&i.cond);
        let then = self.block_value(&i.then_branch);
        let Some((_, els)) = &i.else_branch else {
            self.cx
                .error_spanned_by(i, "`if` without `else` has no value; every `if` needs an `else` branch");
            return None;
        };
        let els = self.expr(els);
        match (then?, els?) {
            (Val::Num(a), Val::Num(b)) => Some(Val::Num(self.make(Op::Select(cond?, a, b), span))),
            (Val::Surr(_), _) | (_, Val::Surr(_)) => {
                self.cx.error_spanned_by(
                    i,
                    "a surrogate cannot be chosen at run time; pick one surrogate per `spike`",
                );
                None
            }
            _ => {
                self.cx.error_spanned_by(i, "both branches of `if` must be numbers");
                None
            }
        }
    }

    fn local(&mut self, local: &syn::Local) {
        let (ident, mutability) = match &local.pat {
            Pat::Ident(p) => (Some(&p.ident), p.mutability.is_some()),
            Pat::Type(t) => match &*t.pat {
                Pat::Ident(p) => (Some(&p.ident), p.mutability.is_some()),
                _ => (None, false),
            },
            _ => (None, false),
        };
        if mutability {
            self.cx.error_spanned_by(
                &local.pat,
                "`let mut` is not allowed: values are immutable; bind a new name (or shadow) instead",
            );
        }
        let Some(ident) = ident else {
            self.cx
                .error_spanned_by(&local.pat, "`let` binds a single name: `let name = expr;`");
            return;
        };
        let Some(init) = &local.init else {
            self.cx
                .error_spanned_by(local, "`let` needs a value: `let name = expr;`");
            return;
        };
        if init.diverge.is_some() {
            self.cx.error_spanned_by(local, "`let ... else` is not supported");
        }
        let name = ident.to_string();
        if symbol::is_reserved(&name) {
            self.cx
                .error_spanned_by(ident, format!("`{name}` is a built-in and cannot be rebound"));
        }
        let value = match self.expr(&init.expr) {
            Some(Val::Bool(_)) => {
                self.cx.error_spanned_by(
                    &init.expr,
                    "a condition cannot be bound with `let`; use it directly in `if cond { a } else { b }`",
                );
                None
            }
            v => v,
        };
        if let Some(Val::Num(id)) = value
            && !matches!(self.dag.node(id).op, Op::Var(_) | Op::Const(_))
        {
            self.names.entry(id).or_insert_with(|| name.clone());
        }
        self.scopes
            .last_mut()
            .expect("a scope is open")
            .insert(name.clone(), value);
        if !self.known_names.contains(&name) {
            self.known_names.push(name);
        }
    }

    fn statement(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Local(l) => self.local(l),
            Stmt::Expr(e, Some(_)) => match e {
                Expr::Assign(_) | Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_) | Expr::Binary(_) => {
                    self.expr(e);
                }
                _ => self.cx.error_spanned_by(
                    e,
                    "a statement without `let` has no effect; bind its value with `let name = ...;`",
                ),
            },
            Stmt::Expr(e @ (Expr::Assign(_) | Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_)), None) => {
                self.expr(e);
            }
            Stmt::Expr(e, None) => {
                self.cx
                    .error_spanned_by(e, "only the last expression of a block gives its value");
            }
            Stmt::Item(item) => self.cx.error_spanned_by(item, "items are not allowed inside `step`"),
            Stmt::Macro(m) => self.cx.error_spanned_by(
                m,
                format!("macros are not supported inside `step`; {}", symbol::allowed()),
            ),
        }
    }

    /// A `{ let ..; expr }` block used as a value.
    fn block_value(&mut self, block: &Block) -> Option<Val> {
        self.scopes.push(HashMap::new());
        let (tail, body) = match block.stmts.split_last() {
            Some((Stmt::Expr(e, None), body)) => (Some(e), body),
            _ => (None, &block.stmts[..]),
        };
        for s in body {
            self.statement(s);
        }
        let v = match tail {
            Some(e) => self.expr(e),
            None => {
                self.cx
                    .error_spanned_by(block, "this block has no value: end it with an expression (no `;`)");
                None
            }
        };
        self.scopes.pop();
        v
    }
}

pub fn lower(cx: &mut Ctxt, def: &ModelDef) -> Option<Lowered> {
    let span = crate::parse::model_span(def);
    let mut dag = Dag::default();
    let mut step_globals = HashMap::new();
    let mut init_globals = HashMap::new();
    let mut names = Vec::new();
    let mut learn_index = 0;
    for (pi, p) in def.params.iter().enumerate() {
        // A learnable parameter is each neuron's own value everywhere, initial values and
        // the default surrogate included.
        let v = if p.learnable {
            learn_index += 1;
            dag.var(Var::Learn(learn_index - 1), p.ident.span())
        } else {
            dag.var(Var::Param(pi), p.ident.span())
        };
        init_globals.insert(p.ident.to_string(), v);
        step_globals.insert(p.ident.to_string(), v);
        names.push(p.ident.to_string());
    }
    let param_names = names.clone();
    for (si, s) in def.states.iter().enumerate() {
        step_globals.insert(s.ident.to_string(), dag.var(Var::State(si), s.ident.span()));
        names.push(s.ident.to_string());
    }
    let mut input_nodes = Vec::new();
    for (ii, inp) in def.inputs.iter().enumerate() {
        let id = dag.var(Var::Input(ii), inp.ident.span());
        input_nodes.push(id);
        step_globals.insert(inp.ident.to_string(), id);
        names.push(inp.ident.to_string());
    }

    let mut lw = Lowerer {
        cx,
        dag,
        scopes: vec![HashMap::new()],
        globals: init_globals,
        default_surrogate: None,
        known_names: param_names,
        in_init: true,
        names: HashMap::new(),
    };
    // Initial values and the default surrogate: expressions of the parameters only.
    let mut init = Vec::new();
    for s in &def.states {
        init.push(lw.num(&s.init));
    }
    if let Some(e) = &def.default_surrogate {
        lw.default_surrogate = lw.surrogate(e);
    }
    lw.globals = step_globals;
    lw.known_names = names;
    lw.in_init = false;

    let step = def.step.as_ref()?;
    let stmts = &step.block.stmts;
    let (tail, body) = match stmts.split_last() {
        Some((Stmt::Expr(e, None), body)) => (Some(e), body),
        _ => (None, &stmts[..]),
    };
    for s in body {
        lw.statement(s);
    }
    let mut next: Vec<Option<NodeId>> = vec![None; def.states.len()];
    let mut spike = None;
    let mut outputs_ok = true;
    match tail {
        Some(Expr::Struct(st)) if st.path.is_ident(symbol::NEXT) => {
            if let Some(rest) = &st.rest {
                lw.cx
                    .error_spanned_by(rest, "`..` is not allowed in `Next`: give every state its next value");
            }
            let mut seen: Vec<String> = Vec::new();
            // The output is `spike`, or `out` for a model that does not spike (unless a state
            // has that name).
            let is_output =
                |name: &str| name == "spike" || name == "out" && !def.states.iter().any(|s| s.ident == "out");
            let mut output_name: Option<String> = None;
            for fv in &st.fields {
                let name = fv.member.to_token_stream().to_string();
                if seen.contains(&name) {
                    lw.cx
                        .error_spanned_by(&fv.member, format!("`{name}` is given twice in `Next`"));
                    continue;
                }
                seen.push(name.clone());
                let value = lw.num(&fv.expr);
                if is_output(&name) {
                    if let Some(first) = &output_name {
                        lw.cx.error_spanned_by(
                            &fv.member,
                            format!("`Next` gives the output twice (`{first}` and `{name}`): keep one"),
                        );
                    }
                    output_name = Some(name.clone());
                    spike = value;
                    continue;
                }
                match def.states.iter().position(|s| s.ident == name) {
                    Some(si) => next[si] = value,
                    None => {
                        let states: Vec<String> = def.states.iter().map(|s| s.ident.to_string()).collect();
                        lw.cx.error_spanned_by(
                            &fv.member,
                            format!(
                                "`{name}` is not a state variable; `Next` takes the states ({}) and the output \
                                 (`spike`, or `out`)",
                                states.join(", ")
                            ),
                        );
                    }
                }
            }
            for s in &def.states {
                if !seen.contains(&s.ident.to_string()) {
                    outputs_ok = false;
                    lw.cx.error_spanned_by(
                        &st.path,
                        format!(
                            "state `{}` is not updated: add `{}: <next value>` to `Next`",
                            s.ident, s.ident
                        ),
                    );
                }
            }
            if output_name.is_none() {
                outputs_ok = false;
                lw.cx.error_spanned_by(
                    &st.path,
                    "`Next` needs the output: add `spike: <expr>` (e.g. `spike(v - v_th)`), or `out: <expr>` for a \
                     model that does not spike",
                );
            }
        }
        Some(other) => {
            outputs_ok = false;
            lw.cx.error_spanned_by(
                other,
                "`step` must end with `Next { <state>: <expr>, .., spike: <expr> }`",
            );
        }
        None => {
            outputs_ok = false;
            lw.cx.error_spanned_by(
                &step.sig.ident,
                "`step` must end with `Next { <state>: <expr>, .., spike: <expr> }` (no trailing `;`)",
            );
        }
    }
    let _ = span;
    let Lowerer {
        cx,
        dag,
        names: let_names,
        ..
    } = lw;
    if !outputs_ok || cx.has_errors() {
        return None;
    }
    let next: Vec<NodeId> = next.into_iter().collect::<Option<_>>()?;
    let spike = spike?;
    let init: Vec<NodeId> = init.into_iter().collect::<Option<_>>()?;
    // Every input must influence the step.
    let mut roots = next.clone();
    roots.push(spike);
    let live = dag.reachable(&roots);
    for (inp, id) in def.inputs.iter().zip(&input_nodes) {
        if !live.contains(id) {
            cx.error_spanned_by(
                &inp.ident,
                format!("input `{}` is never used by `step`; remove it or use it", inp.ident),
            );
        }
    }
    if cx.has_errors() {
        return None;
    }
    Some(Lowered {
        dag,
        next,
        spike,
        init,
        names: let_names,
    })
}
