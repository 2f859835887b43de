//! Phase 6: code generation. One `let` per DAG node, in evaluation order; only the nodes a
//! kernel needs are emitted; zero partials produce no code, constant ones are read from the
//! per-population `consts` array (or inlined when they are literals), dynamic ones from
//! `dynv`. Split by what is generated: `nodes` (the straight-line code), `forward` (the step
//! over a population), `partials` (how partials enter products), `traces` (e-prop); this
//! module assembles the `NeuronModel` impl.

mod forward;
mod nodes;
mod partials;
mod traces;

use std::collections::HashMap;

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::Ident;

use crate::dag::{NodeId, Op, Var};
use crate::lower::Lowered;
use crate::parse::ModelDef;
use crate::sparsity::{Analysis, Kind, Layout, formula};
use forward::{eval_layer, part_roots_for_layer};
use nodes::emit_nodes;
use partials::Gen;
use traces::{factorised_arm, param_traces, synapse_arm};

pub(super) fn rt() -> TokenStream {
    quote!(::plasticity_runtime::__private)
}

pub(super) fn float_lit(v: f64) -> TokenStream {
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

/// What every part of one expansion needs: the model, its learnable parameters, and the
/// generated name of every DAG node (passed explicitly, so that two expansions never share
/// state).
pub(crate) struct Context<'a> {
    pub def: &'a ModelDef,
    /// Indices into `def.params` of the learnable parameters, in order.
    pub learnable: Vec<usize>,
    /// The user's name for parameters, states, inputs and `let`-bound values (with the node
    /// number, since `let` may shadow).
    node_names: HashMap<NodeId, String>,
}

impl<'a> Context<'a> {
    pub fn new(def: &'a ModelDef, low: &Lowered) -> Self {
        let learnable: Vec<usize> = (def.params.iter().enumerate())
            .filter(|(_, p)| p.learnable)
            .map(|(i, _)| i)
            .collect();
        let mut node_names = HashMap::new();
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
            node_names.insert(id, name);
        }
        Context {
            def,
            learnable,
            node_names,
        }
    }

    /// The generated name of a node: its user name when it has one, `n<id>` otherwise.
    pub fn ident(&self, id: NodeId) -> Ident {
        match self.node_names.get(&id) {
            Some(name) => format_ident!("{}", name),
            None => format_ident!("n{}", id.0),
        }
    }

    /// The user's name of a leaf variable, for formulas.
    pub fn var(&self, v: Var) -> String {
        match v {
            Var::Param(i) => self.def.params[i].ident.to_string(),
            Var::Learn(i) => self.def.params[self.learnable[i]].ident.to_string(),
            Var::State(i) => self.def.states[i].ident.to_string(),
            Var::Input(i) => self.def.inputs[i].ident.to_string(),
        }
    }
}

/// Splits `buf` into `rows` mutable rows of length `n`, named `prefix_0..`.
pub(super) fn split_rows(buf: &Ident, prefix: &str, rows: usize) -> TokenStream {
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

pub(super) fn sum(terms: Vec<TokenStream>) -> TokenStream {
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
    let cx = Context::new(def, low);
    let learnable = cx.learnable.clone();
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
        let f = lit_str(&formula(dag, e.node, &|v| cx.var(v)));
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
    let init_code = emit_nodes(dag, &init_nodes, &cx);
    let init_store = low.init.iter().enumerate().map(|(i, &id)| {
        let n = cx.ident(id);
        quote!(out[#i] = #n;)
    });
    let init_partial_nodes: Vec<NodeId> = (a.init_partials.iter()).copied().filter(|&n| !dag.is_zero(n)).collect();
    let learnable_init_state = !init_partial_nodes.is_empty();
    let init_partial_code = emit_nodes(dag, &dag.reachable(&init_partial_nodes), &cx);
    let init_partial_store = a.init_partials.iter().enumerate().map(|(i, &id)| {
        if dag.is_zero(id) {
            quote!(out[#i] = <T as #rt::Real>::zero();)
        } else {
            let n = cx.ident(id);
            quote!(out[#i] = #n;)
        }
    });
    let kq = k * q;
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
    let fwd_code = emit_nodes(dag, &dag.reachable(&fwd_roots), &cx);
    let next_store: Vec<TokenStream> = low
        .next
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let n = cx.ident(id);
            quote!(next[#i] = #n;)
        })
        .collect();
    let spike_id = cx.ident(low.spike);

    // ---- forward over a layer, structure of arrays ----
    let layer_code = eval_layer(dag, low, a, &cx, &fwd_roots, &part_roots_for_layer(low, a));

    // ---- constants ----
    let const_code = emit_nodes(dag, &dag.reachable(&a.consts), &cx);
    let const_store = a.consts.iter().enumerate().map(|(i, &id)| {
        let n = cx.ident(id);
        quote!(consts[#i] = #n;)
    });

    // ---- forward + dynamic partials ----
    let mut part_roots = fwd_roots.clone();
    part_roots.extend(a.dynamic.iter().copied());
    let part_code = emit_nodes(dag, &dag.reachable(&part_roots), &cx);
    let dyn_store = a.dynamic.iter().enumerate().map(|(i, &id)| {
        let n = cx.ident(id);
        quote!(dynv[#i] = #n;)
    });

    // ---- dense partials, vector-Jacobian product (BPTT) ----
    let dense_store = partials::dense_partials(a);
    let vjp_code = partials::vjp(&g);

    // ---- e-prop: synapse traces, factorised traces ----
    let syn_arms = (0..p).map(|port| synapse_arm(&g, port));
    let fact_arms = (0..p).map(|port| factorised_arm(&g, port));
    let param_code = param_traces(&g);

    let spike_at_zero = def.spike_at_zero;
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
                    learnable_init_state: #learnable_init_state,
                    spike_at_zero: #spike_at_zero,
                };

                #[inline]
                #[allow(unused_variables)]
                fn initial_state<T: #rt::Real>(&self, learn: &[T], out: &mut [T]) {
                    let out = &mut out[..#k];
                    #init_code
                    #(#init_store)*
                }

                #[inline]
                #[allow(unused_variables)]
                fn initial_partials<T: #rt::Real>(&self, learn: &[T], out: &mut [T]) {
                    let out = &mut out[..#kq];
                    #init_partial_code
                    #(#init_partial_store)*
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
