//! The `#[neuron_model]` compiler.
//!
//! A neuron model is written as one discrete time step in plain Rust. This crate parses it
//! (`parse`), lowers the step into a hash-consed expression DAG (`lower`, `dag`),
//! differentiates it symbolically (`diff`), classifies every partial derivative as zero,
//! constant or dynamic and chooses the eligibility-trace layout (`sparsity`), checks what
//! needs the derivatives (`check`), and emits specialised kernels (`emit`). Use it through `plasticity_runtime`, which re-exports the
//! macro; the language is documented in `docs/dsl.md`.

mod check;
mod ctxt;
mod dag;
mod diff;
mod emit;
mod lower;
mod parse;
mod sparsity;
mod symbol;
#[cfg(test)]
mod tests;

use proc_macro::TokenStream;
use quote::quote;

/// Compiles a neuron model: see the crate documentation of `plasticity_runtime` and
/// `docs/dsl.md` for the language.
///
/// ```ignore
/// #[neuron_model(surrogate = triangle(0.3, 1.0))]
/// pub mod lif {
///     pub struct Lif {
///         #[param(default = 0.9)] pub alpha: f64,
///         #[param(default = 1.0)] pub v_th: f64,
///         #[state(init = 0.0)] v: f64,
///         #[input] i: f64,
///     }
///     fn step() {
///         let reset = detach(spike(v - v_th));
///         let v = alpha * v + i - reset * v_th;
///         Next { v: v, spike: spike(v - v_th) }
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn neuron_model(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args.into(), item.into()).into()
}

fn expand(args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let mut cx = ctxt::Ctxt::default();
    let args = parse::parse_args(&mut cx, args);
    let module: syn::ItemMod = match syn::parse2(item.clone()) {
        Ok(m) => m,
        Err(_) => {
            cx.error_spanned_by(
                &item,
                "#[neuron_model] goes on a module: `mod name { struct Name { .. } fn step() { .. } }`",
            );
            return cx.into_compile_errors().unwrap_or_default();
        }
    };
    let Some(def) = parse::parse_model(&mut cx, module, args) else {
        return cx.into_compile_errors().unwrap_or_default();
    };
    let lowered = lower::lower(&mut cx, &def);
    match (lowered, cx.has_errors()) {
        (Some(mut low), false) => {
            let analysis = sparsity::analyse(
                &mut low,
                def.states.len(),
                def.inputs.len(),
                def.params.iter().filter(|p| p.learnable).count(),
            );
            check::check(&mut cx, &def, &low.dag, &analysis);
            match cx.into_compile_errors() {
                None => emit::expand(&def, &low, &analysis),
                Some(errors) => {
                    let fallback = fallback(&def);
                    quote!(#errors #fallback)
                }
            }
        }
        _ => {
            let errors = cx.into_compile_errors().unwrap_or_default();
            let fallback = fallback(&def);
            quote!(#errors #fallback)
        }
    }
}

/// On error, the model struct is still emitted (parameters only) so that code using it
/// reports no further errors than the ones in the model.
fn fallback(def: &parse::ModelDef) -> proc_macro2::TokenStream {
    let mod_attrs = &def.module.attrs;
    let mod_vis = &def.module.vis;
    let mod_ident = &def.module.ident;
    let name = &def.strukt.ident;
    let vis = &def.strukt.vis;
    let fields = def.params.iter().map(|p| {
        let (v, id) = (&p.vis, &p.ident);
        quote!(#v #id: f64)
    });
    quote! {
        #(#mod_attrs)*
        #mod_vis mod #mod_ident {
            #[derive(Clone, Debug, Default, PartialEq)]
            #vis struct #name { #(#fields,)* }

            // Never runs: the crate does not compile while the model has errors. It exists
            // so that code using the model reports nothing beyond the model's own errors.
            #[allow(unused_variables)]
            impl ::plasticity_runtime::__private::NeuronModel for #name {
                const NUM_STATES: usize = 0;
                const NUM_INPUTS: usize = 0;
                const NUM_LEARNABLE: usize = 0;
                const NUM_CONSTS: usize = 0;
                const NUM_DYNAMIC: usize = 0;
                const PATTERN: ::plasticity_runtime::__private::Pattern = ::plasticity_runtime::__private::Pattern {
                    model: "", states: &[], inputs: &[], learnable: &[], learnable_ranges: &[], entries: &[], ports: &[], learnable_init_state: false, spike_at_zero: false,
                    num_consts: 0, num_dynamic: 0,
                };
                fn initial_state<T: ::plasticity_runtime::__private::Real>(&self, learn: &[T], out: &mut [T]) { unreachable!() }
                fn initial_partials<T: ::plasticity_runtime::__private::Real>(&self, learn: &[T], out: &mut [T]) { unreachable!() }
                fn learnable_init<T: ::plasticity_runtime::__private::Real>(&self, out: &mut [T]) { unreachable!() }
                fn set_learnable(&mut self, values: &[f64]) { unreachable!() }
                fn eval<T: ::plasticity_runtime::__private::Real, M: ::plasticity_runtime::__private::Mode<T>>(
                    &self, learn: &[T], state: &[T], input: &[T], next: &mut [T], mode: &mut M,
                ) -> T { unreachable!() }
                fn eval_layer<T: ::plasticity_runtime::__private::Real, M: ::plasticity_runtime::__private::Mode<T>>(
                    &self, learn: &[T], state: &mut [T], input: &[T], z: &mut [T], dynv: &mut [T], mode: &mut M,
                ) { unreachable!() }
                fn constants<T: ::plasticity_runtime::__private::Real>(&self, consts: &mut [T]) { unreachable!() }
                fn eval_partials<T: ::plasticity_runtime::__private::Real, M: ::plasticity_runtime::__private::Mode<T>>(
                    &self, learn: &[T], state: &[T], input: &[T], next: &mut [T], dynv: &mut [T], mode: &mut M,
                ) -> T { unreachable!() }
                fn dense_partials<T: ::plasticity_runtime::__private::Real>(
                    consts: &[T], dynv: &[T], j: &mut [T], jz: &mut [T], b: &mut [T], bz: &mut [T], p: &mut [T], pz: &mut [T],
                ) { unreachable!() }
                fn vjp<T: ::plasticity_runtime::__private::Real>(
                    consts: &[T], dynv: &[T], dh: &[T], dz: T, dh_prev: &mut [T], d_input: &mut [T], d_learn: &mut [T],
                ) { unreachable!() }
                fn synapse_traces<T: ::plasticity_runtime::__private::Real>(
                    port: usize, consts: &[T], dynv: &[T], pre: &[T], fact: &[T], syn: &mut [T],
                    ebar: &mut [T], grad: &mut [T], l: T, kappa: T,
                ) { unreachable!() }
                fn factorised_traces<T: ::plasticity_runtime::__private::Real>(port: usize, consts: &[T], pre: &[T], fact: &mut [T]) { unreachable!() }
                fn param_traces<T: ::plasticity_runtime::__private::Real>(
                    consts: &[T], dynv: &[T], eps: &mut [T], ebar: &mut [T], grad: &mut [T], l: T, kappa: T,
                ) { unreachable!() }
            }
        }
    }
}
