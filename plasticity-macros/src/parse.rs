//! Phase 1: syn → the model definition (declarations and the untouched step body).
//!
//! The annotated item is a module holding one struct, whose fields declare the parameters
//! (`#[param]`), state variables (`#[state]`) and input ports (`#[input]`), and one function
//! `fn step()` whose body computes the next state and the output.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, Item, ItemFn, ItemMod, ItemStruct, Type};

use crate::ctxt::Ctxt;

pub struct Param {
    pub ident: Ident,
    pub default: Expr,
    pub learnable: bool,
    /// Declared bounds of a learnable parameter (`range = lo..=hi`, either side optional).
    pub range: (Option<Expr>, Option<Expr>),
    pub attrs: Vec<Attribute>,
    pub vis: syn::Visibility,
}

pub struct State {
    pub ident: Ident,
    pub init: Expr,
}

pub struct Input {
    pub ident: Ident,
}

pub struct ModelDef {
    pub module: ItemMod,
    pub strukt: ItemStruct,
    pub params: Vec<Param>,
    pub states: Vec<State>,
    pub inputs: Vec<Input>,
    pub step: Option<ItemFn>,
    /// The model-wide default surrogate, from `#[neuron_model(surrogate = ...)]`.
    pub default_surrogate: Option<Expr>,
    /// `#[neuron_model(spike_at_zero)]`: `spike(0) = 1`, the neuron fires on `x ≥ 0`.
    pub spike_at_zero: bool,
    /// Other items of the module, passed through unchanged.
    pub other_items: Vec<Item>,
}

/// The attribute's arguments.
#[derive(Default)]
pub struct Args {
    /// `surrogate = family(args..)`.
    pub surrogate: Option<Expr>,
    /// `spike_at_zero`.
    pub spike_at_zero: bool,
}

/// Parses the attribute arguments: `surrogate = family(args..)` and `spike_at_zero` (both
/// optional).
pub fn parse_args(cx: &mut Ctxt, args: TokenStream) -> Args {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("surrogate") {
            if out.surrogate.is_some() {
                return Err(meta.error("duplicate `surrogate` argument"));
            }
            out.surrogate = Some(meta.value()?.parse::<Expr>()?);
            Ok(())
        } else if meta.path.is_ident("spike_at_zero") {
            if out.spike_at_zero {
                return Err(meta.error("duplicate `spike_at_zero` argument"));
            }
            out.spike_at_zero = true;
            Ok(())
        } else {
            Err(meta.error(
                "unknown argument to #[neuron_model]; expected `surrogate = family(args..)`, \
                 e.g. `surrogate = fast_sigmoid(10.0)`, or `spike_at_zero`",
            ))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        cx.push(e);
    }
    out
}

enum Role {
    Param {
        default: Option<Expr>,
        learnable: bool,
        range: Box<(Option<Expr>, Option<Expr>)>,
    },
    State {
        init: Option<Expr>,
    },
    Input,
}

fn parse_role(cx: &mut Ctxt, attr: &Attribute) -> Option<Role> {
    let name = attr.path().get_ident()?.to_string();
    match name.as_str() {
        "param" => {
            let mut default = None;
            let mut learnable = false;
            let mut range: Option<(Option<Expr>, Option<Expr>)> = None;
            let res = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("default") {
                    if default.is_some() {
                        return Err(meta.error("duplicate `default`"));
                    }
                    default = Some(meta.value()?.parse::<Expr>()?);
                    Ok(())
                } else if meta.path.is_ident("learnable") {
                    if learnable {
                        return Err(meta.error("duplicate `learnable`"));
                    }
                    learnable = true;
                    Ok(())
                } else if meta.path.is_ident("range") {
                    if range.is_some() {
                        return Err(meta.error("duplicate `range`"));
                    }
                    let value = meta.value()?.parse::<Expr>()?;
                    match value {
                        Expr::Range(r) if matches!(r.limits, syn::RangeLimits::Closed(_)) || r.end.is_none() => {
                            range = Some((r.start.map(|e| *e), r.end.map(|e| *e)));
                            Ok(())
                        }
                        other => Err(syn::Error::new_spanned(
                            other,
                            "`range` takes an inclusive range of f64 values: `range = 0.0..=1.0`, `0.0..` or `..=1.0`",
                        )),
                    }
                } else {
                    Err(meta.error(
                        "unknown key in #[param(..)]; expected `default = <f64>` and optionally `learnable` and \
                         `range = <lo>..=<hi>`",
                    ))
                }
            });
            if range.is_some() && !learnable {
                cx.error_spanned_by(
                    attr,
                    "`range` bounds a learnable parameter (kept in range after every update): add `learnable`, or \
                     drop `range` for a fixed parameter",
                );
            }
            let range = Box::new(range.unwrap_or((None, None)));
            if let Err(e) = res {
                cx.push(e);
                return Some(Role::Param {
                    default: None,
                    learnable,
                    range,
                });
            }
            if default.is_none() {
                cx.error_spanned_by(attr, "#[param] needs a default value: `#[param(default = 1.0)]`");
            }
            Some(Role::Param {
                default,
                learnable,
                range,
            })
        }
        "state" => {
            let mut init = None;
            let res = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("init") {
                    if init.is_some() {
                        return Err(meta.error("duplicate `init`"));
                    }
                    init = Some(meta.value()?.parse::<Expr>()?);
                    Ok(())
                } else {
                    Err(meta.error("unknown key in #[state(..)]; expected `init = <expression of parameters>`"))
                }
            });
            if let Err(e) = res {
                cx.push(e);
                return Some(Role::State { init: None });
            }
            if init.is_none() {
                cx.error_spanned_by(attr, "#[state] needs an initial value: `#[state(init = 0.0)]`");
            }
            Some(Role::State { init })
        }
        "input" => {
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                cx.error_spanned_by(attr, "#[input] takes no arguments");
            }
            Some(Role::Input)
        }
        _ => None,
    }
}

fn is_float(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.is_ident("f64"),
        _ => false,
    }
}

pub fn parse_model(cx: &mut Ctxt, module: ItemMod, args: Args) -> Option<ModelDef> {
    let Args {
        surrogate: default_surrogate,
        spike_at_zero,
    } = args;
    let Some((_, items)) = &module.content else {
        cx.error_spanned_by(
            &module,
            "#[neuron_model] needs an inline module: `mod name { struct .. {..} fn step() {..} }`",
        );
        return None;
    };
    let mut strukt: Option<ItemStruct> = None;
    let mut step: Option<ItemFn> = None;
    let mut other_items = Vec::new();
    for item in items {
        match item {
            Item::Struct(s) => {
                if strukt.is_some() {
                    cx.error_spanned_by(
                        &s.ident,
                        "a neuron model module holds exactly one struct (the model); move other structs out of the module",
                    );
                } else {
                    strukt = Some(s.clone());
                }
            }
            Item::Fn(f) if f.sig.ident == "step" => {
                if step.is_some() {
                    cx.error_spanned_by(&f.sig.ident, "duplicate `fn step`");
                } else {
                    step = Some(f.clone());
                }
            }
            Item::Use(_) => other_items.push(item.clone()),
            other => cx.error_spanned_by(
                other,
                "a neuron model module holds only the model struct, `fn step()` and `use` items",
            ),
        }
    }
    let Some(strukt) = strukt else {
        cx.error_at(
            module.ident.span(),
            "no model struct in this module: declare `struct Name { #[param(..)] .., #[state(..)] .., #[input] .. }`",
        );
        return None;
    };
    if step.is_none() {
        cx.error_at(
            module.ident.span(),
            "no step function in this module: add `fn step() { ...; Next { <state>: <expr>, .., spike: <expr> } }`",
        );
    }
    if let Some(f) = &step {
        if !f.sig.inputs.is_empty() {
            cx.error_spanned_by(
                &f.sig.inputs,
                "`fn step()` takes no arguments: parameters, states and inputs are referred to by their field names",
            );
        }
        if !matches!(f.sig.output, syn::ReturnType::Default) {
            cx.error_spanned_by(
                &f.sig.output,
                "`fn step()` has no return type: its body ends with `Next { <state>: <expr>, .., spike: <expr> }`",
            );
        }
        if !f.sig.generics.params.is_empty() {
            cx.error_spanned_by(&f.sig.generics, "`fn step()` cannot be generic");
        }
    }
    if !strukt.generics.params.is_empty() {
        cx.error_spanned_by(
            &strukt.generics,
            "a neuron model struct cannot be generic; the float type is chosen by the runtime",
        );
    }

    let mut params = Vec::new();
    let mut states = Vec::new();
    let mut inputs = Vec::new();
    let mut seen: Vec<Ident> = Vec::new();
    match &strukt.fields {
        syn::Fields::Named(named) => {
            for field in &named.named {
                let Some(ident) = field.ident.clone() else { continue };
                let name = ident.to_string();
                if crate::symbol::is_reserved(&name) {
                    cx.error_spanned_by(
                        &ident,
                        format!("`{name}` is a built-in of the neuron model language and cannot name a field"),
                    );
                }
                if seen.contains(&ident) {
                    cx.error_spanned_by(&ident, format!("duplicate name `{name}`"));
                }
                seen.push(ident.clone());
                if !is_float(&field.ty) {
                    cx.error_spanned_by(
                        &field.ty,
                        "model fields must be `f64`: parameters are stored in f64, and the generated kernels run in f32 or f64 as the runtime chooses",
                    );
                }
                let mut roles = Vec::new();
                let mut doc_attrs = Vec::new();
                for attr in &field.attrs {
                    match parse_role(cx, attr) {
                        Some(role) => roles.push((attr, role)),
                        None => doc_attrs.push(attr.clone()),
                    }
                }
                if roles.len() > 1 {
                    cx.error_spanned_by(
                        roles[1].0,
                        "a field has exactly one role: #[param], #[state] or #[input]",
                    );
                }
                match roles.into_iter().next() {
                    None => cx.error_spanned_by(
                        &ident,
                        format!("field `{name}` has no role: mark it #[param(default = ..)], #[state(init = ..)] or #[input]"),
                    ),
                    Some((_, Role::Param {
                        default,
                        learnable,
                        range,
                    })) => params.push(Param {
                        ident,
                        default: default.unwrap_or_else(|| syn::parse_quote!(0.0)),
                        learnable,
                        range: *range,
                        attrs: doc_attrs,
                        vis: field.vis.clone(),
                    }),
                    Some((_, Role::State { init })) => states.push(State {
                        ident,
                        init: init.unwrap_or_else(|| syn::parse_quote!(0.0)),
                    }),
                    Some((_, Role::Input)) => inputs.push(Input { ident }),
                }
            }
        }
        other => cx.error_at(
            if matches!(other, syn::Fields::Unit) {
                strukt.ident.span()
            } else {
                other.span()
            },
            "the model struct needs named fields: parameters, states and inputs",
        ),
    }
    if states.is_empty() && cx_ok_fields(&strukt) {
        cx.error_at(strukt.ident.span(), "a neuron model needs at least one #[state] field");
    }
    if inputs.is_empty() && cx_ok_fields(&strukt) {
        cx.error_at(
            strukt.ident.span(),
            "a neuron model needs at least one #[input] field (a synaptic input port)",
        );
    }
    Some(ModelDef {
        module,
        strukt,
        params,
        states,
        inputs,
        step,
        default_surrogate,
        spike_at_zero,
        other_items,
    })
}

fn cx_ok_fields(s: &ItemStruct) -> bool {
    matches!(s.fields, syn::Fields::Named(_))
}

/// The span of the model name, for errors about the model as a whole.
pub fn model_span(def: &ModelDef) -> Span {
    def.strukt.ident.span()
}
