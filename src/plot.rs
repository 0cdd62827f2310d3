//! Charts of a [`Trace`]: one panel per scalar, stacked vertically, each with its own
//! y axis, so that a learning rate of `3e-4` and a momentum of `0.9` are both
//! readable. SVG and PNG, with no system libraries: text is measured and (for PNG)
//! drawn with the DejaVu Sans font embedded in the binary.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Trace;

/// Width of a chart in pixels.
pub const WIDTH: u32 = 960;
/// Height of one scalar's panel in pixels.
pub const PANEL_HEIGHT: u32 = 260;
/// Height of the title band in pixels.
const TITLE_HEIGHT: u32 = 44;

/// The font family every text element uses; registered from embedded bytes.
const FONT: &str = "sans-serif";

/// Line colours, cycled through the panels.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output file name ends in neither `.svg` nor `.png`.
    #[error("cannot tell the image format of `{0}`: the file name must end in `.svg` or `.png`")]
    UnknownFormat(String),
    /// The trace has no scalar or no step to draw.
    #[error("nothing to plot: the trace has no {0}")]
    Empty(&'static str),
    /// The embedded font could not be loaded.
    #[error("the embedded font could not be loaded")]
    Font,
    /// Drawing or writing the image failed.
    #[error("cannot draw `{target}`: {message}")]
    Draw {
        /// The output file (or `<memory>`).
        target: String,
        /// What the drawing backend reported.
        message: String,
    },
}

/// The image formats a chart can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Scalable vector graphics.
    Svg,
    /// A bitmap, PNG-encoded.
    Png,
}

impl ImageFormat {
    /// The format a file name asks for, from its extension (case-insensitive).
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "svg" => Some(ImageFormat::Svg),
            "png" => Some(ImageFormat::Png),
            _ => None,
        }
    }
}

/// The chart's size in pixels for a trace with `scalars` columns.
pub fn chart_size(scalars: usize) -> (u32, u32) {
    let panels = u32::try_from(scalars.max(1)).unwrap_or(u32::MAX).min(64);
    (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * panels)
}

/// Draw `trace` into the file `path`, as SVG or PNG depending on its extension.
pub fn plot_to_file(trace: &Trace, title: &str, path: &Path) -> Result<(), PlotError> {
    check_trace(trace)?;
    panels_to_file(&trace_panels(trace), title, "step", path)
}

/// Draw `trace` as an SVG document held in memory.
pub fn plot_to_svg_string(trace: &Trace, title: &str) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let size = chart_size(trace.columns.len());
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(root, trace, title, "<memory>")?;
    }
    Ok(svg)
}

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// One panel of a chart: a y axis named `name` and one line per series (label,
/// points). Non-finite y values break a line.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// The y axis' name.
    pub name: String,
    /// `(label, points)` per line.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// A trace's columns as panels, one line each, x the step.
fn trace_panels(trace: &Trace) -> Vec<Panel> {
    trace
        .columns
        .iter()
        .enumerate()
        .map(|(index, name)| Panel {
            name: name.clone(),
            series: vec![(
                name.clone(),
                trace
                    .records
                    .iter()
                    .map(|r| {
                        (
                            r.step as f64,
                            r.values.get(index).copied().unwrap_or(f64::NAN),
                        )
                    })
                    .collect(),
            )],
        })
        .collect()
}

/// Draw `panels` (stacked, x axis named `x_desc`) into the SVG or PNG file `path`:
/// the overlay charts of `regimen compare`.
pub fn panels_to_file(
    panels: &[Panel],
    title: &str,
    x_desc: &str,
    path: &Path,
) -> Result<(), PlotError> {
    let format = ImageFormat::from_path(path)
        .ok_or_else(|| PlotError::UnknownFormat(path.display().to_string()))?;
    let size = chart_size(panels.len());
    let target = path.display().to_string();
    match format {
        ImageFormat::Svg => draw_panels(
            SVGBackend::new(path, size).into_drawing_area(),
            panels,
            title,
            x_desc,
            &target,
        ),
        ImageFormat::Png => draw_panels(
            BitMapBackend::new(path, size).into_drawing_area(),
            panels,
            title,
            x_desc,
            &target,
        ),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    trace: &Trace,
    title: &str,
    target: &str,
) -> Result<(), PlotError> {
    check_trace(trace)?;
    draw_panels(root, &trace_panels(trace), title, "step", target)
}

/// A trace without columns or records has nothing to draw.
fn check_trace(trace: &Trace) -> Result<(), PlotError> {
    if trace.columns.is_empty() {
        return Err(PlotError::Empty("scalar"));
    }
    if trace.records.is_empty() {
        return Err(PlotError::Empty("step"));
    }
    Ok(())
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    title: &str,
    x_desc: &str,
    target: &str,
) -> Result<(), PlotError> {
    if panels.is_empty() {
        return Err(PlotError::Empty("scalar"));
    }
    let all_x = || {
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| s.1.iter().map(|p| p.0))
    };
    if all_x().next().is_none() {
        return Err(PlotError::Empty("step"));
    }
    register_font()?;
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw {
        target: target.to_string(),
        message: e.to_string(),
    };
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let body = root
        .titled(title, (FONT, 24).into_font().style(FontStyle::Bold))
        .map_err(|e| fail(&e))?;
    let areas = body.split_evenly((panels.len().min(64), 1));
    let x_max = all_x().fold(0.0f64, f64::max).max(1.0);
    // A one-line panel takes its colour from its position, so stacked scalars
    // differ; lines overlaid in one panel take theirs from the line's index.
    let single = panels.iter().all(|p| p.series.len() <= 1);

    for (index, (area, panel)) in areas.iter().zip(panels).enumerate() {
        let name = &panel.name;
        let (y_min, y_max) = y_range(panel.series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
        let y_scale = y_min.abs().max(y_max.abs());
        let mut chart = ChartBuilder::on(area)
            .margin_top(8)
            .margin_bottom(4)
            .margin_left(12)
            .margin_right(24)
            .x_label_area_size(42)
            .y_label_area_size(86)
            .build_cartesian_2d(0f64..x_max, y_min..y_max)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(name.as_str())
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .x_label_formatter(&|x| format_tick(*x, x_max))
            .y_label_formatter(&|y| format_tick(*y, y_scale))
            .x_labels(10)
            .y_labels(6)
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(|e| fail(&e))?;
        let mut any_label = false;
        let mut all_points = Vec::new();
        for (series_index, (label, points)) in panel.series.iter().enumerate() {
            let color = COLORS[if single { index } else { series_index } % COLORS.len()];
            all_points.extend_from_slice(points);
            // Non-finite values break the line instead of wrecking the axes.
            let mut labelled = false;
            for segment in points.split(|p| !p.1.is_finite()).filter(|s| !s.is_empty()) {
                let series = chart
                    .draw_series(LineSeries::new(
                        segment.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| fail(&e))?;
                if !labelled {
                    series.label(label.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                    labelled = true;
                }
            }
            any_label |= labelled;
        }
        if any_label {
            chart
                .configure_series_labels()
                .position(legend_position(&all_points, (0.0, x_max), (y_min, y_max)))
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .draw()
                .map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// A y range that shows every finite value, keeps the top band free for the legend,
/// and stays non-degenerate for a constant scalar.
fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let (below, above) = if span > 0.0 {
        (span * 0.05, span * 0.3)
    } else if lo != 0.0 {
        (lo.abs() * 0.1, lo.abs() * 0.1)
    } else {
        (1.0, 1.0)
    };
    // Keep a non-negative scalar's axis from dipping below zero.
    let bottom = if lo >= 0.0 && lo - below < 0.0 {
        0.0
    } else {
        lo - below
    };
    (bottom, hi + above)
}

/// The corner of the plotting area where the legend hides the fewest points
/// (upper right when several are free).
fn legend_position(points: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    // The legend box covers roughly a quarter of the width and a fifth of the height.
    let (x_span, y_span) = (x.1 - x.0, y.1 - y.0);
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let hidden = |right: bool, upper: bool| {
        points
            .iter()
            .filter(|(px, py)| {
                let fx = (px - x.0) / x_span;
                let fy = (py - y.0) / y_span;
                let in_x = if right { fx >= 0.72 } else { fx <= 0.28 };
                let in_y = if upper { fy >= 0.8 } else { fy <= 0.2 };
                in_x && in_y
            })
            .count()
    };
    let mut best = (SeriesLabelPosition::UpperRight, usize::MAX);
    for (position, right, upper) in corners {
        let count = hidden(right, upper);
        if count < best.1 {
            best = (position, count);
        }
    }
    best.0
}

/// A short tick label. `scale` is the largest magnitude on the axis: all ticks of
/// an axis use the same notation, plain decimals for ordinary magnitudes and
/// scientific notation when the axis only holds tiny or huge values.
pub fn format_tick(v: f64, scale: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if (1e-3..1e6).contains(&scale.abs()) {
        let text = format!("{v:.6}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        // Rounding can turn a tiny non-zero value into "-0".
        if text == "-0" || text.is_empty() {
            "0".to_string()
        } else {
            text.to_string()
        }
    } else {
        let text = format!("{v:.2e}");
        // 1.50e-4 -> 1.5e-4
        match text.split_once('e') {
            Some((mantissa, exponent)) => {
                let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
                format!("{mantissa}e{exponent}")
            }
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(format_tick(0.0, 1.0), "0");
        assert_eq!(format_tick(0.1, 1.0), "0.1");
        assert_eq!(format_tick(0.95, 1.0), "0.95");
        assert_eq!(format_tick(20.0, 100.0), "20");
        // One notation per axis: an axis reaching 0.001 keeps decimals.
        assert_eq!(format_tick(8e-4, 1e-3), "0.0008");
        assert_eq!(format_tick(3e-4, 3e-4), "3e-4");
        assert_eq!(format_tick(1.5e-5, 3e-4), "1.5e-5");
        assert_eq!(format_tick(2.5e7, 1e8), "2.5e7");
    }

    #[test]
    fn constant_scalars_get_a_visible_range() {
        let (lo, hi) = y_range([0.9, 0.9].into_iter());
        assert!(lo < 0.9 && hi > 0.9);
        let (lo, hi) = y_range([0.0].into_iter());
        assert!(lo <= 0.0 && hi > 0.0);
        assert_eq!(y_range([f64::NAN].into_iter()), (0.0, 1.0));
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(
            ImageFormat::from_path(Path::new("a.SVG")),
            Some(ImageFormat::Svg)
        );
        assert_eq!(
            ImageFormat::from_path(Path::new("a.png")),
            Some(ImageFormat::Png)
        );
        assert_eq!(ImageFormat::from_path(Path::new("a.pdf")), None);
        assert_eq!(ImageFormat::from_path(Path::new("a")), None);
    }
}
