//! Phase 5: code generation. One `let` per DAG node, in evaluation order; only the nodes a
//! kernel needs are emitted; zero partials produce no code, constant ones are read from the
//! per-layer `consts` array (or inlined when they are literals), dynamic ones from `dynv`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;

use crate::dag::{Class, CmpOp, Dag, NodeId, Op, Surrogate, Var};
use crate::lower::Lowered;
use crate::parse::ModelDef;
use crate::sparsity::{Analysis, EntryInfo, Kind, Layout, Matrix, formula};

fn rt() -> TokenStream {
    quote!(::plasticity_runtime::__private)
}

fn float_lit(v: f64) -> TokenStream {
    if v.is_finite() {
        let l = Literal::f64_suffixed(v);
        quote!(#l)
    } else if v.is_nan() {
        quote!(f64::NAN)
    } else if v > 0.0 {
        quote!(f64::INFINITY)
    } else {
        quote!(f64::NEG_INFINITY)
    }
}

/// The generated name of a node: the user's name for parameters, states, inputs and
/// `let`-bound values (with the node number, since `let` may shadow), `n<id>` otherwise.
fn node_ident(id: NodeId) -> Ident {
    NODE_NAMES.with(|names| match names.borrow().get(&id) {
        Some(name) => format_ident!("{}", name),
        None => format_ident!("n{}", id.0),
    })
}

thread_local! {
    static NODE_NAMES: std::cell::RefCell<std::collections::HashMap<NodeId, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Sets the names [`node_ident`] uses for one expansion.
fn set_node_names(def: &ModelDef, low: &Lowered, learnable: &[usize]) {
    let mut names = std::collections::HashMap::new();
    for id in (0..low.dag.len() as u32).map(NodeId) {
        let name = match low.dag.node(id).op {
            Op::Var(Var::Param(i)) => format!("p_{}", def.params[i].ident),
            Op::Var(Var::Learn(i)) => format!("p_{}", def.params[learnable[i]].ident),
            Op::Var(Var::State(i)) => format!("s_{}", def.states[i].ident),
            Op::Var(Var::Input(i)) => format!("in_{}", def.inputs[i].ident),
            _ => match low.names.get(&id) {
                Some(n) => format!("{n}_{}", id.0),
                None => continue,
            },
        };
        names.insert(id, name);
    }
    NODE_NAMES.with(|n| *n.borrow_mut() = names);
}

struct Names<'a> {
    def: &'a ModelDef,
    learnable: Vec<usize>,
}

impl Names<'_> {
    fn var(&self, v: Var) -> String {
        match v {
            Var::Param(i) => self.def.params[i].ident.to_string(),
            Var::Learn(i) => self.def.params[self.learnable[i]].ident.to_string(),
            Var::State(i) => self.def.states[i].ident.to_string(),
            Var::Input(i) => self.def.inputs[i].ident.to_string(),
        }
    }
}

fn surrogate_tokens(s: Surrogate) -> TokenStream {
    let rt = rt();
    let variant = format_ident!("{}", s.kind.variant());
    let fields: Vec<TokenStream> = s
        .kind
        .arg_names()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let f = format_ident!("{}", name);
            let a = node_ident(s.args[i]);
            quote!(#f: #a)
        })
        .collect();
    quote!(#rt::Surrogate::#variant { #(#fields),* })
}

/// Where the leaves of a kernel come from.
#[derive(Clone, Copy, PartialEq)]
enum Access {
    /// One neuron: `state[i]`, `input[i]`, `learn[i]`.
    Neuron,
    /// Neuron `j` of a layer stored as structure of arrays: `st_i[j]`, `in_i[j]`, `ln_i[j]`.
    Layer,
}

fn soa_ident(prefix: &str, i: usize) -> Ident {
    format_ident!("{}_{}", prefix, i)
}

/// `let nK = ...;` for every node in `ids` (ascending).
fn emit_nodes(dag: &Dag, ids: &[NodeId], names: &Names) -> TokenStream {
    emit_nodes_with(dag, ids, names, Access::Neuron)
}

fn emit_nodes_with(dag: &Dag, ids: &[NodeId], names: &Names, access: Access) -> TokenStream {
    let rt = rt();
    let mut out = TokenStream::new();
    for &id in ids {
        let node = dag.node(id);
        let span: Span = node.span;
        let n = node_ident(id);
        let v = |x: NodeId| node_ident(x);
        let expr = match node.op {
            Op::Const(bits) => {
                let l = float_lit(f64::from_bits(bits));
                quote!(<T as #rt::Real>::from_f64(#l))
            }
            Op::Var(var) => match var {
                Var::Param(i) => {
                    let f = &names.def.params[i].ident;
                    quote!(<T as #rt::Real>::from_f64(self.#f))
                }
                Var::Learn(i) if access == Access::Layer => {
                    let a = soa_ident("ln", i);
                    quote!(#a[j])
                }
                Var::State(i) if access == Access::Layer => {
                    let a = soa_ident("st", i);
                    quote!(#a[j])
                }
                Var::Input(i) if access == Access::Layer => {
                    let a = soa_ident("inp", i);
                    quote!(#a[j])
                }
                Var::Learn(i) => quote!(learn[#i]),
                Var::State(i) => quote!(state[#i]),
                Var::Input(i) => quote!(input[#i]),
            },
            Op::Add(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(#a + #b)
            }
            Op::Sub(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(#a - #b)
            }
            Op::Mul(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(#a * #b)
            }
            Op::Div(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(#a / #b)
            }
            Op::Neg(a) => {
                let a = v(a);
                quote!(-#a)
            }
            Op::Exp(a)
            | Op::Ln(a)
            | Op::Sqrt(a)
            | Op::Abs(a)
            | Op::Tanh(a)
            | Op::Sin(a)
            | Op::Cos(a)
            | Op::Sigmoid(a)
            | Op::Signum(a) => {
                let f = format_ident!(
                    "{}",
                    match node.op {
                        Op::Exp(_) => "exp",
                        Op::Ln(_) => "ln",
                        Op::Sqrt(_) => "sqrt",
                        Op::Abs(_) => "abs",
                        Op::Tanh(_) => "tanh",
                        Op::Sin(_) => "sin",
                        Op::Cos(_) => "cos",
                        Op::Sigmoid(_) => "sigmoid",
                        _ => "signum0",
                    }
                );
                let a = v(a);
                quote!(<T as #rt::Real>::#f(#a))
            }
            Op::Powi(a, k) => {
                let a = v(a);
                quote!(<T as #rt::Real>::powi(#a, #k))
            }
            Op::Powf(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(<T as #rt::Real>::powf(#a, #b))
            }
            Op::Min(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(<T as #rt::Real>::min(#a, #b))
            }
            Op::Max(a, b) => {
                let (a, b) = (v(a), v(b));
                quote!(<T as #rt::Real>::max(#a, #b))
            }
            Op::Clamp(x, lo, hi) => {
                let (x, lo, hi) = (v(x), v(lo), v(hi));
                quote!(<T as #rt::Real>::clamp(#x, #lo, #hi))
            }
            Op::Spike(x, s) => {
                let x = v(x);
                let s = surrogate_tokens(s);
                quote!(#rt::Mode::spike(mode, #x, #s))
            }
            Op::SurrogateGrad(x, s) => {
                let x = v(x);
                let s = surrogate_tokens(s);
                quote!((#s).grad(#x))
            }
            Op::Detach(a) => {
                let a = v(a);
                quote!(#rt::Mode::detach(mode, #a))
            }
            Op::Cmp(o, a, b) => {
                let (a, b) = (v(a), v(b));
                let t = match o {
                    CmpOp::Lt => quote!(<),
                    CmpOp::Le => quote!(<=),
                    CmpOp::Gt => quote!(>),
                    CmpOp::Ge => quote!(>=),
                    CmpOp::Eq => quote!(==),
                    CmpOp::Ne => quote!(!=),
                };
                out.extend(quote_spanned!(span=> let #n: bool = #a #t #b;));
                continue;
            }
            Op::And(a, b) => {
                let (a, b) = (v(a), v(b));
                out.extend(quote_spanned!(span=> let #n: bool = #a && #b;));
                continue;
            }
            Op::Or(a, b) => {
                let (a, b) = (v(a), v(b));
                out.extend(quote_spanned!(span=> let #n: bool = #a || #b;));
                continue;
            }
            Op::Not(a) => {
                let a = v(a);
                out.extend(quote_spanned!(span=> let #n: bool = !#a;));
                continue;
            }
            Op::Select(c, a, b) => {
                let (c, a, b) = (v(c), v(a), v(b));
                quote!(if #c { #a } else { #b })
            }
        };
        out.extend(quote_spanned!(span=> let #n: T = #expr;));
    }
    out
}

/// How a partial enters a product.
enum Coef {
    One,
    MinusOne,
    Value(TokenStream),
}

struct Gen<'a> {
    dag: &'a Dag,
    a: &'a Analysis,
}

impl Gen<'_> {
    fn coef(&self, e: &EntryInfo, hoisted: bool) -> Coef {
        if let Some(v) = self.dag.constant_value(e.node) {
            if v == 1.0 {
                return Coef::One;
            }
            if v == -1.0 {
                return Coef::MinusOne;
            }
            let l = float_lit(v);
            let rt = rt();
            return Coef::Value(quote!(<T as #rt::Real>::from_f64(#l)));
        }
        if hoisted {
            let id = coef_ident(e);
            return Coef::Value(quote!(#id));
        }
        Coef::Value(slot(e.kind))
    }

    /// `let c_J_r_c = consts[i];` for every entry in `entries` that is not a literal.
    fn hoist(&self, entries: &[&EntryInfo]) -> TokenStream {
        let mut out = TokenStream::new();
        let mut done: Vec<(Matrix, usize, usize)> = Vec::new();
        for e in entries {
            if self.dag.constant_value(e.node).is_some() || done.contains(&(e.matrix, e.row, e.col)) {
                continue;
            }
            done.push((e.matrix, e.row, e.col));
            let id = coef_ident(e);
            let s = slot(e.kind);
            out.extend(quote!(let #id: T = #s;));
        }
        out
    }

    fn term(&self, e: &EntryInfo, value: TokenStream, hoisted: bool) -> TokenStream {
        match self.coef(e, hoisted) {
            Coef::One => value,
            Coef::MinusOne => quote!((-#value)),
            Coef::Value(c) => quote!(#c * #value),
        }
    }
}

fn slot(kind: Kind) -> TokenStream {
    match kind {
        Kind::Constant(i) => quote!(consts[#i]),
        Kind::Dynamic(i) => quote!(dynv[#i]),
    }
}

fn coef_ident(e: &EntryInfo) -> Ident {
    format_ident!("c_{}_{}_{}", e.matrix.name().to_lowercase(), e.row, e.col)
}

fn sum(terms: Vec<TokenStream>) -> TokenStream {
    let rt = rt();
    if terms.is_empty() {
        quote!(<T as #rt::Real>::zero())
    } else {
        quote!(#(#terms)+*)
    }
}

fn lit_str(s: &str) -> Literal {
    Literal::string(s)
}

pub fn expand(def: &ModelDef, low: &Lowered, a: &Analysis) -> TokenStream {
    let rt = rt();
    let dag = &low.dag;
    let learnable: Vec<usize> = def
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.learnable)
        .map(|(i, _)| i)
        .collect();
    let names = Names {
        def,
        learnable: learnable.clone(),
    };
    set_node_names(def, low, &learnable);
    let g = Gen { dag, a };
    let (k, p, q) = (a.k, a.p, a.q);
    let name = &def.strukt.ident;
    let name_str = lit_str(&name.to_string());
    let n_consts = a.consts.len();
    let n_dyn = a.dynamic.len();

    // ---- the struct: parameters only ----
    let strukt_attrs = &def.strukt.attrs;
    let strukt_vis = &def.strukt.vis;
    let fields = def.params.iter().map(|p| {
        let attrs = &p.attrs;
        let vis = &p.vis;
        let id = &p.ident;
        quote!(#(#attrs)* #vis #id: f64)
    });
    let defaults = def.params.iter().map(|p| {
        let id = &p.ident;
        let d = &p.default;
        quote!(#id: #d)
    });

    // ---- metadata ----
    let state_names = def.states.iter().map(|s| lit_str(&s.ident.to_string()));
    let input_names: Vec<Literal> = def.inputs.iter().map(|s| lit_str(&s.ident.to_string())).collect();
    let learn_names = learnable.iter().map(|&i| lit_str(&def.params[i].ident.to_string()));
    let entries = a.entries.iter().map(|e| {
        let m = format_ident!("{}", e.matrix.name());
        let (row, col) = (e.row, e.col);
        let kind = match e.kind {
            Kind::Constant(i) => quote!(#rt::EntryKind::Constant(#i)),
            Kind::Dynamic(i) => quote!(#rt::EntryKind::Dynamic(#i)),
        };
        let f = lit_str(&formula(dag, e.node, &|v| names.var(v)));
        quote!(#rt::Entry { matrix: #rt::Matrix::#m, row: #row, col: #col, kind: #kind, formula: #f })
    });
    let ports = a.ports.iter().zip(&input_names).map(|(pi, pname)| {
        let rows = pi.rows.iter().map(|r| match r {
            Layout::Absent => quote!(#rt::RowLayout::Absent),
            Layout::Factorised(i) => quote!(#rt::RowLayout::Factorised(#i)),
            Layout::PerSynapse(i) => quote!(#rt::RowLayout::PerSynapse(#i)),
        });
        let (nf, ns) = (pi.factorised, pi.per_synapse);
        quote!(#rt::PortLayout { name: #pname, rows: &[#(#rows),*], factorised: #nf, per_synapse: #ns })
    });

    // ---- initial state ----
    let init_nodes = dag.reachable(&low.init);
    let init_code = emit_nodes(dag, &init_nodes, &names);
    let init_store = low.init.iter().enumerate().map(|(i, &id)| {
        let n = node_ident(id);
        quote!(out[#i] = #n;)
    });
    let learn_ranges = learnable.iter().map(|&pi| {
        let (lo, hi) = &def.params[pi].range;
        let lo = lo
            .as_ref()
            .map_or_else(|| quote!(f64::NEG_INFINITY), |e| quote!((#e) as f64));
        let hi = hi
            .as_ref()
            .map_or_else(|| quote!(f64::INFINITY), |e| quote!((#e) as f64));
        quote!((#lo, #hi))
    });
    let learn_init = learnable.iter().enumerate().map(|(qi, &pi)| {
        let f = &def.params[pi].ident;
        quote!(out[#qi] = <T as #rt::Real>::from_f64(self.#f);)
    });
    let learn_set = learnable.iter().enumerate().map(|(qi, &pi)| {
        let f = &def.params[pi].ident;
        quote!(self.#f = values[#qi];)
    });

    // ---- forward ----
    let mut fwd_roots = low.next.clone();
    fwd_roots.push(low.spike);
    let fwd_code = emit_nodes(dag, &dag.reachable(&fwd_roots), &names);
    let next_store: Vec<TokenStream> = low
        .next
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let n = node_ident(id);
            quote!(next[#i] = #n;)
        })
        .collect();
    let spike_id = node_ident(low.spike);

    // ---- forward over a layer, structure of arrays ----
    let layer_code = eval_layer(dag, low, a, &names, &fwd_roots, &part_roots_for_layer(low, a));

    // ---- constants ----
    let const_code = emit_nodes(dag, &dag.reachable(&a.consts), &names);
    let const_store = a.consts.iter().enumerate().map(|(i, &id)| {
        let n = node_ident(id);
        quote!(consts[#i] = #n;)
    });

    // ---- forward + dynamic partials ----
    let mut part_roots = fwd_roots.clone();
    part_roots.extend(a.dynamic.iter().copied());
    let part_code = emit_nodes(dag, &dag.reachable(&part_roots), &names);
    let dyn_store = a.dynamic.iter().enumerate().map(|(i, &id)| {
        let n = node_ident(id);
        quote!(dynv[#i] = #n;)
    });

    // ---- dense partials ----
    let dense_store = a.entries.iter().map(|e| {
        let s = slot(e.kind);
        let (r, c) = (e.row, e.col);
        match e.matrix {
            Matrix::J => quote!(j[#r * #k + #c] = #s;),
            Matrix::Jz => quote!(jz[#c] = #s;),
            Matrix::B => quote!(b[#r * #p + #c] = #s;),
            Matrix::Bz => quote!(bz[#c] = #s;),
            Matrix::P => quote!(p[#r * #q + #c] = #s;),
            Matrix::Pz => quote!(pz[#c] = #s;),
        }
    });

    // ---- vector-Jacobian product (BPTT) ----
    let mut vjp_code = TokenStream::new();
    let col_sum = |m: Matrix, mz: Matrix, col: usize| -> TokenStream {
        let mut terms = Vec::new();
        for r in 0..k {
            if let Some(e) = a.get(m, r, col) {
                terms.push(g.term(e, quote!(dh[#r]), false));
            }
        }
        if let Some(e) = a.get(mz, 0, col) {
            terms.push(g.term(e, quote!(dz), false));
        }
        sum(terms)
    };
    for c in 0..k {
        let s = col_sum(Matrix::J, Matrix::Jz, c);
        vjp_code.extend(quote!(dh_prev[#c] = #s;));
    }
    for c in 0..p {
        let s = col_sum(Matrix::B, Matrix::Bz, c);
        vjp_code.extend(quote!(d_input[#c] = #s;));
    }
    for c in 0..q {
        let s = col_sum(Matrix::P, Matrix::Pz, c);
        vjp_code.extend(quote!(d_learn[#c] += #s;));
    }

    // ---- e-prop: synapse traces, factorised traces ----
    let syn_arms = (0..p).map(|port| synapse_arm(&g, port));
    let fact_arms = (0..p).map(|port| factorised_arm(&g, port));
    let param_code = param_traces(&g);

    let mod_attrs = &def.module.attrs;
    let mod_vis = &def.module.vis;
    let mod_ident = &def.module.ident;
    let other = &def.other_items;

    quote! {
        #(#mod_attrs)*
        #mod_vis mod #mod_ident {
            #(#other)*

            #(#strukt_attrs)*
            #[derive(Clone, Debug, PartialEq)]
            #strukt_vis struct #name {
                #(#fields,)*
            }

            impl ::core::default::Default for #name {
                fn default() -> Self {
                    Self { #(#defaults,)* }
                }
            }

            impl #name {
                /// A report of the model's sparsity pattern and eligibility-trace layout.
                pub fn describe() -> ::std::string::String {
                    <Self as #rt::NeuronModel>::PATTERN.describe()
                }
            }

            #[allow(unused_variables, unused_parens, non_snake_case, clippy::all)]
            impl #rt::NeuronModel for #name {
                const NUM_STATES: usize = #k;
                const NUM_INPUTS: usize = #p;
                const NUM_LEARNABLE: usize = #q;
                const NUM_CONSTS: usize = #n_consts;
                const NUM_DYNAMIC: usize = #n_dyn;
                const PATTERN: #rt::Pattern = #rt::Pattern {
                    model: #name_str,
                    states: &[#(#state_names),*],
                    inputs: &[#(#input_names),*],
                    learnable: &[#(#learn_names),*],
                    learnable_ranges: &[#(#learn_ranges),*],
                    entries: &[#(#entries),*],
                    ports: &[#(#ports),*],
                    num_consts: #n_consts,
                    num_dynamic: #n_dyn,
                };

                #[inline]
                fn initial_state<T: #rt::Real>(&self, out: &mut [T]) {
                    let out = &mut out[..#k];
                    #init_code
                    #(#init_store)*
                }

                #[inline]
                fn learnable_init<T: #rt::Real>(&self, out: &mut [T]) {
                    let out = &mut out[..#q];
                    #(#learn_init)*
                }

                fn set_learnable(&mut self, values: &[f64]) {
                    let values = &values[..#q];
                    #(#learn_set)*
                }

                #[inline(always)]
                fn eval<T: #rt::Real, M: #rt::Mode<T>>(
                    &self, learn: &[T], state: &[T], input: &[T], next: &mut [T], mode: &mut M,
                ) -> T {
                    let (learn, state, input, next) = (&learn[..#q], &state[..#k], &input[..#p], &mut next[..#k]);
                    #fwd_code
                    #(#next_store)*
                    #spike_id
                }

                #[inline]
                fn eval_layer<T: #rt::Real, M: #rt::Mode<T>>(
                    &self, learn: &[T], state: &mut [T], input: &[T], z: &mut [T], dynv: &mut [T], mode: &mut M,
                ) {
                    #layer_code
                }

                #[inline]
                fn constants<T: #rt::Real>(&self, consts: &mut [T]) {
                    let consts = &mut consts[..#n_consts];
                    #const_code
                    #(#const_store)*
                }

                #[inline(always)]
                fn eval_partials<T: #rt::Real, M: #rt::Mode<T>>(
                    &self, learn: &[T], state: &[T], input: &[T], next: &mut [T], dynv: &mut [T], mode: &mut M,
                ) -> T {
                    let (learn, state, input, next) = (&learn[..#q], &state[..#k], &input[..#p], &mut next[..#k]);
                    let dynv = &mut dynv[..#n_dyn];
                    #part_code
                    #(#next_store)*
                    #(#dyn_store)*
                    #spike_id
                }

                fn dense_partials<T: #rt::Real>(
                    consts: &[T], dynv: &[T], j: &mut [T], jz: &mut [T], b: &mut [T], bz: &mut [T], p: &mut [T], pz: &mut [T],
                ) {
                    let (j, jz, b, bz, p, pz) = (&mut j[..#k * #k], &mut jz[..#k], &mut b[..#k * #p], &mut bz[..#p], &mut p[..#k * #q], &mut pz[..#q]);
                    for x in j.iter_mut().chain(jz.iter_mut()).chain(b.iter_mut()).chain(bz.iter_mut()).chain(p.iter_mut()).chain(pz.iter_mut()) {
                        *x = <T as #rt::Real>::zero();
                    }
                    #(#dense_store)*
                }

                #[inline(always)]
                fn vjp<T: #rt::Real>(
                    consts: &[T], dynv: &[T], dh: &[T], dz: T, dh_prev: &mut [T], d_input: &mut [T], d_learn: &mut [T],
                ) {
                    let (dh, dh_prev, d_input, d_learn) = (&dh[..#k], &mut dh_prev[..#k], &mut d_input[..#p], &mut d_learn[..#q]);
                    #vjp_code
                }

                #[inline(always)]
                fn synapse_traces<T: #rt::Real>(
                    port: usize, consts: &[T], dynv: &[T], pre: &[T], fact: &[T], syn: &mut [T],
                    ebar: &mut [T], grad: &mut [T], l: T, kappa: T,
                ) {
                    match port {
                        #(#syn_arms)*
                        _ => {}
                    }
                }

                #[inline(always)]
                fn factorised_traces<T: #rt::Real>(port: usize, consts: &[T], pre: &[T], fact: &mut [T]) {
                    match port {
                        #(#fact_arms)*
                        _ => {}
                    }
                }

                #[inline(always)]
                fn param_traces<T: #rt::Real>(
                    consts: &[T], dynv: &[T], eps: &mut [T], ebar: &mut [T], grad: &mut [T], l: T, kappa: T,
                ) {
                    #param_code
                }
            }
        }
    }
}

fn eps_ident(r: usize) -> Ident {
    format_ident!("eps_{}", r)
}

/// Splits `buf` into `rows` mutable rows of length `n`, named `prefix_0..`.
fn split_rows(buf: &Ident, prefix: &str, rows: usize) -> TokenStream {
    let mut out = TokenStream::new();
    if rows == 0 {
        return out;
    }
    out.extend(quote!(let rest = &mut #buf[..#rows * n];));
    for r in 0..rows {
        let id = format_ident!("{}_{}", prefix, r);
        out.extend(quote!(let (#id, rest) = rest.split_at_mut(n);));
    }
    out
}

fn synapse_arm(g: &Gen, port: usize) -> TokenStream {
    let a = g.a;
    let k = a.k;
    let info = &a.ports[port];
    let reach: Vec<usize> = (0..k).filter(|&r| info.rows[r] != Layout::Absent).collect();
    // Entries this arm uses.
    let mut used: Vec<&EntryInfo> = Vec::new();
    for &c in &reach {
        if let Some(e) = a.get(Matrix::Jz, 0, c) {
            used.push(e);
        }
    }
    if let Some(e) = a.get(Matrix::Bz, 0, port) {
        used.push(e);
    }
    for (r, layout) in info.rows.iter().enumerate() {
        if let Layout::PerSynapse(_) = layout {
            for &c in &reach {
                if let Some(e) = a.get(Matrix::J, r, c) {
                    used.push(e);
                }
            }
            if let Some(e) = a.get(Matrix::B, r, port) {
                used.push(e);
            }
        }
    }
    let hoist = g.hoist(&used);
    let fact_rows = (0..info.factorised).map(|i| {
        let id = format_ident!("f_{}", i);
        quote!(let #id = &fact[#i * n..(#i + 1) * n];)
    });
    let syn_split = split_rows(&format_ident!("syn"), "s", info.per_synapse);
    let reads = reach.iter().map(|&r| {
        let e = eps_ident(r);
        match info.rows[r] {
            Layout::Factorised(i) => {
                let f = format_ident!("f_{}", i);
                quote!(let #e = #f[i];)
            }
            Layout::PerSynapse(i) => {
                let s = format_ident!("s_{}", i);
                quote!(let #e = #s[i];)
            }
            Layout::Absent => quote!(),
        }
    });
    let mut e_terms = Vec::new();
    for &c in &reach {
        if let Some(e) = a.get(Matrix::Jz, 0, c) {
            let v = eps_ident(c);
            e_terms.push(g.term(e, quote!(#v), true));
        }
    }
    if let Some(e) = a.get(Matrix::Bz, 0, port) {
        e_terms.push(g.term(e, quote!(x), true));
    }
    let e_val = sum(e_terms);
    let mut writes = TokenStream::new();
    for (r, layout) in info.rows.iter().enumerate() {
        if let Layout::PerSynapse(i) = layout {
            let mut terms = Vec::new();
            for &c in &reach {
                if let Some(e) = a.get(Matrix::J, r, c) {
                    let v = eps_ident(c);
                    terms.push(g.term(e, quote!(#v), true));
                }
            }
            if let Some(e) = a.get(Matrix::B, r, port) {
                terms.push(g.term(e, quote!(x), true));
            }
            let s = format_ident!("s_{}", i);
            let val = sum(terms);
            writes.extend(quote!(#s[i] = #val;));
        }
    }
    let body = quote! {
        let x = pre[i];
        #(#reads)*
        let e: T = #e_val;
        #writes
    };
    quote! {
        #port => {
            let n = pre.len();
            let grad = &mut grad[..n];
            #hoist
            #(#fact_rows)*
            #syn_split
            if ebar.is_empty() {
                for i in 0..n {
                    #body
                    grad[i] += l * e;
                }
            } else {
                let ebar = &mut ebar[..n];
                for i in 0..n {
                    #body
                    let eb = kappa * ebar[i] + e;
                    ebar[i] = eb;
                    grad[i] += l * eb;
                }
            }
        }
    }
}

fn factorised_arm(g: &Gen, port: usize) -> TokenStream {
    let a = g.a;
    let info = &a.ports[port];
    if info.factorised == 0 {
        return quote!();
    }
    let frows: Vec<(usize, usize)> = info
        .rows
        .iter()
        .enumerate()
        .filter_map(|(r, l)| match l {
            Layout::Factorised(i) => Some((r, *i)),
            _ => None,
        })
        .collect();
    let mut used = Vec::new();
    for &(r, _) in &frows {
        for &(c, _) in &frows {
            if let Some(e) = a.get(Matrix::J, r, c) {
                used.push(e);
            }
        }
        if let Some(e) = a.get(Matrix::B, r, port) {
            used.push(e);
        }
    }
    let hoist = g.hoist(&used);
    let split = split_rows(&format_ident!("fact"), "f", info.factorised);
    let reads = frows.iter().map(|&(r, i)| {
        let e = eps_ident(r);
        let f = format_ident!("f_{}", i);
        quote!(let #e = #f[i];)
    });
    let writes = frows.iter().map(|&(r, i)| {
        let mut terms = Vec::new();
        for &(c, _) in &frows {
            if let Some(e) = a.get(Matrix::J, r, c) {
                let v = eps_ident(c);
                terms.push(g.term(e, quote!(#v), true));
            }
        }
        if let Some(e) = a.get(Matrix::B, r, port) {
            terms.push(g.term(e, quote!(x), true));
        }
        let val = sum(terms);
        let f = format_ident!("f_{}", i);
        quote!(#f[i] = #val;)
    });
    quote! {
        #port => {
            let n = pre.len();
            #hoist
            #split
            for i in 0..n {
                let x = pre[i];
                #(#reads)*
                #(#writes)*
            }
        }
    }
}

fn param_traces(g: &Gen) -> TokenStream {
    let a = g.a;
    let (k, q) = (a.k, a.q);
    if q == 0 {
        return quote!();
    }
    let mut out = quote! {
        let eps = &mut eps[..#q * #k];
        let grad = &mut grad[..#q];
    };
    for qi in 0..q {
        let reads = (0..k).map(|c| {
            let e = eps_ident(c);
            quote!(let #e = eps[#qi * #k + #c];)
        });
        let mut e_terms = Vec::new();
        for c in 0..k {
            if let Some(e) = a.get(Matrix::Jz, 0, c) {
                let v = eps_ident(c);
                e_terms.push(g.term(e, quote!(#v), false));
            }
        }
        if let Some(e) = a.get(Matrix::Pz, 0, qi) {
            e_terms.push(g.term(e, quote!(<T as ::plasticity_runtime::__private::Real>::one()), false));
        }
        let e_val = sum(e_terms);
        let writes = (0..k).map(|r| {
            let mut terms = Vec::new();
            for c in 0..k {
                if let Some(e) = a.get(Matrix::J, r, c) {
                    let v = eps_ident(c);
                    terms.push(g.term(e, quote!(#v), false));
                }
            }
            if let Some(e) = a.get(Matrix::P, r, qi) {
                terms.push(g.term(e, quote!(<T as ::plasticity_runtime::__private::Real>::one()), false));
            }
            let val = sum(terms);
            quote!(eps[#qi * #k + #r] = #val;)
        });
        out.extend(quote! {
            {
                #(#reads)*
                let e: T = #e_val;
                #(#writes)*
                if ebar.is_empty() {
                    grad[#qi] += l * e;
                } else {
                    let eb = kappa * ebar[#qi] + e;
                    ebar[#qi] = eb;
                    grad[#qi] += l * eb;
                }
            }
        });
    }
    out
}

fn part_roots_for_layer(low: &Lowered, a: &Analysis) -> Vec<NodeId> {
    let mut roots = low.next.clone();
    roots.push(low.spike);
    roots.extend(a.dynamic.iter().copied());
    roots
}

/// Splits `buf` (immutable) into `rows` rows of length `n`, named `prefix_0..`.
fn rows_of(buf: &Ident, prefix: &str, rows: usize) -> TokenStream {
    let defs = (0..rows).map(|r| {
        let id = soa_ident(prefix, r);
        quote!(let #id = &#buf[#r * n..(#r + 1) * n];)
    });
    quote!(#(#defs)*)
}

/// The forward step (and, when `dynv` is not empty, the dynamic partials) of `n` neurons
/// stored as structure of arrays. Nodes that depend only on fixed parameters are computed
/// once, before the loop; the loop body is the per-neuron straight-line code.
fn eval_layer(
    dag: &Dag,
    low: &Lowered,
    a: &Analysis,
    names: &Names,
    fwd_roots: &[NodeId],
    part_roots: &[NodeId],
) -> TokenStream {
    let (k, p, q) = (a.k, a.p, a.q);
    let nd = a.dynamic.len();
    let split = |ids: Vec<NodeId>| -> (Vec<NodeId>, Vec<NodeId>) {
        ids.into_iter().partition(|&id| dag.class(id) != Class::Dynamic)
    };
    let (fwd_hoist, fwd_loop) = split(dag.reachable(fwd_roots));
    let (part_hoist, part_loop) = split(dag.reachable(part_roots));
    let fwd_pre = emit_nodes_with(dag, &fwd_hoist, names, Access::Layer);
    let fwd_body = emit_nodes_with(dag, &fwd_loop, names, Access::Layer);
    let part_pre = emit_nodes_with(dag, &part_hoist, names, Access::Layer);
    let part_body = emit_nodes_with(dag, &part_loop, names, Access::Layer);
    let learn_rows = rows_of(&format_ident!("learn"), "ln", q);
    let input_rows = rows_of(&format_ident!("input"), "inp", p);
    let state_split = split_rows(&format_ident!("state"), "st", k);
    let dyn_split = split_rows(&format_ident!("dynv"), "dy", nd);
    let stores: Vec<TokenStream> = low
        .next
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let st = soa_ident("st", i);
            let v = node_ident(id);
            quote!(#st[j] = #v;)
        })
        .collect();
    let dyn_stores = a.dynamic.iter().enumerate().map(|(i, &id)| {
        let d = soa_ident("dy", i);
        let v = node_ident(id);
        quote!(#d[j] = #v;)
    });
    let spike = node_ident(low.spike);
    quote! {
        let n = z.len();
        let (learn, input) = (&learn[..#q * n], &input[..#p * n]);
        #learn_rows
        #input_rows
        #state_split
        if dynv.is_empty() {
            #fwd_pre
            for j in 0..n {
                #fwd_body
                #(#stores)*
                z[j] = #spike;
            }
        } else {
            #dyn_split
            #part_pre
            for j in 0..n {
                #part_body
                #(#stores)*
                #(#dyn_stores)*
                z[j] = #spike;
            }
        }
    }
}
