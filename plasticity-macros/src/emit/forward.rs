//! The forward step over a population stored as structure of arrays, with the dynamic
//! partials when asked.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

use super::nodes::{Access, emit_nodes_with, soa_ident};
use super::{Context, split_rows};
use crate::dag::{Class, Dag, NodeId};
use crate::lower::Lowered;
use crate::sparsity::Analysis;

pub(super) fn part_roots_for_layer(low: &Lowered, a: &Analysis) -> Vec<NodeId> {
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
pub(super) fn eval_layer(
    dag: &Dag,
    low: &Lowered,
    a: &Analysis,
    cx: &Context,
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
    let fwd_pre = emit_nodes_with(dag, &fwd_hoist, cx, Access::Layer);
    let fwd_body = emit_nodes_with(dag, &fwd_loop, cx, Access::Layer);
    let part_pre = emit_nodes_with(dag, &part_hoist, cx, Access::Layer);
    let part_body = emit_nodes_with(dag, &part_loop, cx, Access::Layer);
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
            let v = cx.ident(id);
            quote!(#st[j] = #v;)
        })
        .collect();
    let dyn_stores = a.dynamic.iter().enumerate().map(|(i, &id)| {
        let d = soa_ident("dy", i);
        let v = cx.ident(id);
        quote!(#d[j] = #v;)
    });
    let spike = cx.ident(low.spike);
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
