//! The e-prop time loop allocates nothing: a counting global allocator sees no allocation
//! between the first and the last streamed step, whatever the sequence length.
//!
//! Only allocations made by the test thread and by the workers of the pool under test are
//! counted. Worker threads of an earlier, already dropped pool may still be shutting down while
//! a later measurement runs, and their exit (thread-local destructors) allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ndarray::{Array1, Array2};
use plasticity_runtime::NeuronModel;
use plasticity_runtime::models::{BellecAlif, BellecLif};
use plasticity_runtime::{
    Algorithm, Feedback, LayerSpec, Loss, NetworkBuilder, Optimizer, ReadoutSpec, StepTargets, TrainConfig, Trainer,
    Window,
};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Which measurement the threads being counted belong to.
static GENERATION: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The measurement this thread takes part in; 0 for none.
    static MEMBER_OF: Cell<usize> = const { Cell::new(0) };
}

fn counted() -> bool {
    COUNTING.load(Ordering::SeqCst)
        && MEMBER_OF
            .try_with(|m| m.get() == GENERATION.load(Ordering::SeqCst))
            .unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during_steps<M: NeuronModel>(
    model: M,
    threads: usize,
    kappa: f64,
    update_every: Option<usize>,
) -> usize {
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    MEMBER_OF.with(|m| m.set(generation));
    pool.broadcast(|_| MEMBER_OF.with(|m| m.set(generation)));
    pool.install(|| {
        let net = NetworkBuilder::<f32>::new(20)
            .layer(LayerSpec::new(model, 32).recurrent(true).bias(true))
            .readout(ReadoutSpec::new(4, kappa))
            .seed(1)
            .build()
            .unwrap();
        let mut config = TrainConfig::new(
            Algorithm::Eprop(Feedback::Symmetric),
            Loss::CrossEntropy(Window::All),
            Optimizer::adam(1e-3),
        );
        config.update_every = update_every;
        let mut tr = Trainer::new(net, config).unwrap();
        let batch = 4;
        let steps = 200;
        let x = Array2::from_shape_fn((batch, 20), |(b, i)| if (b + i) % 3 == 0 { 1.0f32 } else { 0.0 });
        let classes = Array1::from_vec(vec![0usize, 1, 2, 3]);
        tr.begin_sequence(batch, steps).unwrap();
        // Warm up: the first step may size thread-local scratch.
        tr.step(x.view(), Some(StepTargets::Classes(classes.view()))).unwrap();
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 1..steps {
            tr.step(x.view(), Some(StepTargets::Classes(classes.view()))).unwrap();
        }
        COUNTING.store(false, Ordering::SeqCst);
        tr.end_sequence().unwrap();
        ALLOCATIONS.load(Ordering::SeqCst)
    })
}

#[test]
fn eprop_steps_do_not_allocate() {
    let alif = BellecAlif::default;
    assert_eq!(
        allocations_during_steps(alif(), 1, 0.0, None),
        0,
        "single thread, κ = 0"
    );
    assert_eq!(
        allocations_during_steps(alif(), 1, 0.8, Some(10)),
        0,
        "single thread, κ > 0, online updates"
    );
    assert_eq!(allocations_during_steps(alif(), 2, 0.8, Some(10)), 0, "two threads");
    // LIF's traces are all factorised: with κ = 0 its gradient goes through the window.
    let lif = BellecLif::default;
    assert_eq!(allocations_during_steps(lif(), 1, 0.0, None), 0, "LIF, single thread");
    assert_eq!(allocations_during_steps(lif(), 2, 0.0, Some(10)), 0, "LIF, two threads");
}
