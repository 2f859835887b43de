//! Every name the language gives a meaning to, in one table: the parser reserves them, the
//! lowering resolves calls through them, and error messages list them from here.

use crate::dag::{NodeId, Op, SurrogateKind};

/// The built-in functions, in the order error messages list them.
pub const FUNCTIONS: &[&str] = &[
    "exp", "ln", "sqrt", "powi", "powf", "abs", "tanh", "sin", "cos", "sigmoid", "min", "max", "clamp", "spike",
    "detach",
];

/// Builds the node of a function of one number from its operand.
pub type UnaryOp = fn(NodeId) -> Op;

/// The functions of one number and the node each builds (the others have their own arity
/// and rules in `lower`).
pub const UNARY: &[(&str, UnaryOp)] = &[
    ("exp", Op::Exp),
    ("ln", Op::Ln),
    ("sqrt", Op::Sqrt),
    ("abs", Op::Abs),
    ("tanh", Op::Tanh),
    ("sin", Op::Sin),
    ("cos", Op::Cos),
    ("sigmoid", Op::Sigmoid),
];

/// The struct expression that ends `step`.
pub const NEXT: &str = "Next";

/// Whether `name` is taken by the language (a function, a surrogate family or `Next`), so
/// that no parameter, state or input may use it.
pub fn is_reserved(name: &str) -> bool {
    FUNCTIONS.contains(&name) || name == NEXT || SurrogateKind::lookup(name).is_some()
}

/// The unary function called `name`, if it is one.
pub fn unary(name: &str) -> Option<UnaryOp> {
    UNARY.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The functions as a list for messages: `exp, ln, …`.
pub fn function_list() -> String {
    FUNCTIONS.join(", ")
}

/// What a step body may contain, for messages about what it may not.
pub fn allowed() -> String {
    format!(
        "allowed: float literals, names, `let`, `+ - * /`, unary `-`, comparisons, `&& || !`, `if`/`else`, and the \
         functions {}",
        FUNCTIONS.join(" ")
    )
}
