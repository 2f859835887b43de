//! PNG plots for the examples: line charts of training curves, spike rasters and membrane
//! potentials.
//!
//! Only rank 0 of a data-parallel job draws ([`crate::job`]); the others return at once.
//!
//! Text is drawn with a bundled font (a subset of DejaVu Sans, `support/fonts/`), so plotting
//! needs no system font libraries.

use std::ops::Range;
use std::path::Path;

use anyhow::{Result, anyhow};
use ndarray::ArrayView3;
use plasticity_runtime::{Float, Network, Probe};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// Registers the bundled font as `sans-serif`, once.
fn font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("fonts/DejaVuSans-subset.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the bundled font could not be read"))
    }
}

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A white canvas with a titled, meshed chart over `x` × `y`.
fn frame<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    title: &str,
    (x, y): (Range<f64>, Range<f64>),
    (x_label, y_label): (&str, &str),
) -> Result<Chart<'a, 'b>> {
    font()?;
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(chart)
}

/// A line chart of one or more named series of `(x, y)` points.
pub fn line_chart(path: &Path, title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    if !crate::job::is_root() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in series.iter().flat_map(|(_, s)| s.iter()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(anyhow!("{title}: nothing to plot"));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    let mut chart = frame(
        &root,
        title,
        (x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad)),
        (x_label, ""),
    )?;
    for (i, (name, s)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{path:?}: {e}"))?;
    Ok(())
}

/// A spike raster: `(time, neuron)` dots over `neurons` rows and `duration` time units.
pub fn raster(path: &Path, title: &str, spikes: &[(f64, usize)], neurons: usize, duration: f64) -> Result<()> {
    if !crate::job::is_root() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    let mut chart = frame(
        &root,
        title,
        (0.0..duration.max(1e-9), 0.0..neurons.max(1) as f64),
        ("time (s)", "neuron"),
    )?;
    chart
        .draw_series(
            spikes
                .iter()
                .map(|&(t, n)| Circle::new((t, n as f64 + 0.5), 1, BLACK.filled())),
        )
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{path:?}: {e}"))?;
    Ok(())
}

/// Membrane potentials (the state `v`, or the model's first state if it has none) of a few
/// neurons of each named population over one sample `x` (`[T, 1, n_in]`), recorded with
/// probes, drawn against time in seconds (`dt` per step).
pub fn membrane<F: Float>(
    path: &Path,
    net: &Network<F>,
    x: ArrayView3<F>,
    populations: &[(&str, &[usize])],
    dt: f64,
) -> Result<()> {
    if !crate::job::is_root() {
        return Ok(());
    }
    let mut probes = Vec::new();
    let mut labels = Vec::new();
    for &(name, neurons) in populations {
        let p = net
            .population_index(name)
            .ok_or_else(|| anyhow!("membrane plot: no population {name}"))?;
        let states = net.populations[p].pattern().states;
        let state = states.iter().find(|s| **s == "v").or(states.first()).copied();
        let state = state.ok_or_else(|| anyhow!("membrane plot: population {name} has no state"))?;
        let valid: Vec<usize> = neurons
            .iter()
            .copied()
            .filter(|&j| j < net.populations[p].size())
            .collect();
        labels.extend(valid.iter().map(|j| format!("{name} {j}")));
        probes.push(Probe::state(name, state).neurons(valid));
    }
    let out = net.run_with_probes(x, &probes)?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for rec in &out.probes {
        for j in 0..rec.shape()[2] {
            let points = (0..rec.shape()[0])
                .map(|t| (t as f64 * dt, rec[[t, 0, j]].to_f64()))
                .collect();
            series.push((labels[series.len()].clone(), points));
        }
    }
    let named: Vec<(&str, Vec<(f64, f64)>)> = series.iter().map(|(l, s)| (l.as_str(), s.clone())).collect();
    line_chart(path, "membrane potential, first test sample", "time (s)", &named)
}
