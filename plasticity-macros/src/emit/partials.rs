//! How partial derivatives enter the generated products: literals inlined, the rest read from
//! `consts` / `dynv` (or hoisted into a local), and the BPTT reverse step built from them.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

use super::{float_lit, rt, sum};
use crate::dag::Dag;
use crate::sparsity::{Analysis, EntryInfo, Kind, Matrix};

/// How a partial enters a product.
enum Coef {
    One,
    MinusOne,
    Value(TokenStream),
}

pub(super) struct Gen<'a> {
    pub dag: &'a Dag,
    pub a: &'a Analysis,
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
    pub(super) fn hoist(&self, entries: &[&EntryInfo]) -> TokenStream {
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

    pub(super) fn term(&self, e: &EntryInfo, value: TokenStream, hoisted: bool) -> TokenStream {
        match self.coef(e, hoisted) {
            Coef::One => value,
            Coef::MinusOne => quote!((-#value)),
            Coef::Value(c) => quote!(#c * #value),
        }
    }
}

pub(super) fn slot(kind: Kind) -> TokenStream {
    match kind {
        Kind::Constant(i) => quote!(consts[#i]),
        Kind::Dynamic(i) => quote!(dynv[#i]),
    }
}

pub(super) fn coef_ident(e: &EntryInfo) -> Ident {
    format_ident!("c_{}_{}_{}", e.matrix.name().to_lowercase(), e.row, e.col)
}

/// `dense_partials`: every structurally nonzero entry written into its dense matrix.
pub(super) fn dense_partials(a: &Analysis) -> Vec<TokenStream> {
    let (k, p, q) = (a.k, a.p, a.q);
    a.entries
        .iter()
        .map(|e| {
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
        })
        .collect()
}

/// The reverse step of BPTT for one neuron: `dh_prev = Jᵀ dh + Jzᵀ dz`,
/// `d_input = Bᵀ dh + Bzᵀ dz`, `d_learn += Pᵀ dh + Pzᵀ dz`, over the nonzero entries only.
pub(super) fn vjp(g: &Gen) -> TokenStream {
    let a = g.a;
    let (k, p, q) = (a.k, a.p, a.q);
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
    let mut out = TokenStream::new();
    for c in 0..k {
        let s = col_sum(Matrix::J, Matrix::Jz, c);
        out.extend(quote!(dh_prev[#c] = #s;));
    }
    for c in 0..p {
        let s = col_sum(Matrix::B, Matrix::Bz, c);
        out.extend(quote!(d_input[#c] = #s;));
    }
    for c in 0..q {
        let s = col_sum(Matrix::P, Matrix::Pz, c);
        out.extend(quote!(d_learn[#c] += #s;));
    }
    out
}
