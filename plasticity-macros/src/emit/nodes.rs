//! One `let` per DAG node, in evaluation order: the straight-line code every kernel is made
//! of.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;

use super::{Context, float_lit, rt};
use crate::dag::{CmpOp, Dag, NodeId, Op, Surrogate, Var};

fn surrogate_tokens(cx: &Context, s: Surrogate) -> TokenStream {
    let rt = rt();
    let variant = format_ident!("{}", s.kind.variant());
    let fields: Vec<TokenStream> = s
        .kind
        .arg_names()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let f = format_ident!("{}", name);
            let a = cx.ident(s.args[i]);
            quote!(#f: #a)
        })
        .collect();
    quote!(#rt::Surrogate::#variant { #(#fields),* })
}

/// Where the leaves of a kernel come from.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Access {
    /// One neuron: `state[i]`, `input[i]`, `learn[i]`.
    Neuron,
    /// Neuron `j` of a layer stored as structure of arrays: `st_i[j]`, `in_i[j]`, `ln_i[j]`.
    Layer,
}

pub(super) fn soa_ident(prefix: &str, i: usize) -> Ident {
    format_ident!("{}_{}", prefix, i)
}

/// `let nK = ...;` for every node in `ids` (ascending).
pub(super) fn emit_nodes(dag: &Dag, ids: &[NodeId], cx: &Context) -> TokenStream {
    emit_nodes_with(dag, ids, cx, Access::Neuron)
}

pub(super) fn emit_nodes_with(dag: &Dag, ids: &[NodeId], cx: &Context, access: Access) -> TokenStream {
    let rt = rt();
    let mut out = TokenStream::new();
    for &id in ids {
        let node = dag.node(id);
        let span: Span = node.span;
        let n = cx.ident(id);
        let v = |x: NodeId| cx.ident(x);
        let expr = match node.op {
            Op::Const(bits) => {
                let l = float_lit(f64::from_bits(bits));
                quote!(<T as #rt::Real>::from_f64(#l))
            }
            Op::Var(var) => match var {
                Var::Param(i) => {
                    let f = &cx.def.params[i].ident;
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
                let s = surrogate_tokens(cx, s);
                if cx.def.spike_at_zero {
                    quote!(#rt::Mode::spike_at_zero(mode, #x, #s))
                } else {
                    quote!(#rt::Mode::spike(mode, #x, #s))
                }
            }
            Op::SurrogateGrad(x, s) => {
                let x = v(x);
                let s = surrogate_tokens(cx, s);
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
