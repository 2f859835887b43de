//! Cross-cutting checks on the analysed model: properties that need the derivatives, not
//! just the syntax.

use crate::ctxt::Ctxt;
use crate::dag::Dag;
use crate::parse::ModelDef;
use crate::sparsity::{Analysis, Matrix};

/// Runs every check, reporting into `cx`.
pub fn check(cx: &mut Ctxt, def: &ModelDef, dag: &Dag, analysis: &Analysis) {
    learnable_parameters_get_gradients(cx, def, dag, analysis);
}

/// A learnable parameter whose every partial (`P = ∂h'/∂θ`, `Pz = ∂z/∂θ`, and `∂s0/∂θ` of the
/// initial state) is structurally zero would be trained with a gradient that is always zero:
/// almost certainly a mistake.
fn learnable_parameters_get_gradients(cx: &mut Ctxt, def: &ModelDef, dag: &Dag, analysis: &Analysis) {
    for (q, param) in def.params.iter().filter(|p| p.learnable).enumerate() {
        let k = analysis.k;
        let through_step = (analysis.entries.iter()).any(|e| matches!(e.matrix, Matrix::P | Matrix::Pz) && e.col == q);
        let through_init = (analysis.init_partials[q * k..(q + 1) * k].iter()).any(|&n| !dag.is_zero(n));
        let reaches = through_step || through_init;
        if !reaches {
            cx.error_spanned_by(
                &param.ident,
                format!(
                    "learnable parameter `{}` can never receive a gradient: the next state, the output and the initial \
                     state do not depend on it through any differentiable path (it is used only in conditions, under \
                     `detach`, or not at all); drop `learnable` to make it a fixed parameter",
                    param.ident
                ),
            );
        }
    }
}
