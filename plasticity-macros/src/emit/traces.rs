//! e-prop kernels: per-synapse traces (eq. 1–2) of one port, factorised traces, and the
//! traces of the learnable parameters.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

use super::partials::Gen;
use super::{split_rows, sum};
use crate::sparsity::{EntryInfo, Layout, Matrix};

fn eps_ident(r: usize) -> Ident {
    format_ident!("eps_{}", r)
}

pub(super) fn synapse_arm(g: &Gen, port: usize) -> TokenStream {
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

pub(super) fn factorised_arm(g: &Gen, port: usize) -> TokenStream {
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

pub(super) fn param_traces(g: &Gen) -> TokenStream {
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
