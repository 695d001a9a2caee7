//! PNG plots of the scaling curves (items 4 and 5) with plotters' bitmap
//! backend. Text is drawn with ab_glyph from the DejaVu Sans font embedded by
//! the `dejavu` crate: no fontconfig, no system fonts.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::dmamap::DmaRow;
use crate::throughput::ThroughputRow;
use crate::BenchError;

const FONT: &str = "sans-serif";

/// A named figure of a [`DmaRow`].
type Series = (&'static str, fn(&DmaRow) -> f64);

fn perr(e: impl std::fmt::Display) -> BenchError {
    BenchError::Check(format!("plot: {e}"))
}

fn fonts() -> Result<(), BenchError> {
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| BenchError::Check("plot: embedded font rejected".into()))
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
];

fn color(i: usize) -> RGBColor {
    COLORS.get(i % COLORS.len()).copied().unwrap_or(BLACK)
}

/// A chart of either figure.
type Chart<'a, X, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>;

/// Draws one labelled series: a line `width` pixels wide with a dot on
/// every point.
fn line<X, Y>(
    ch: &mut Chart<'_, X, Y>,
    name: &str,
    pts: Vec<(X::ValueType, Y::ValueType)>,
    c: RGBColor,
    width: u32,
) -> Result<(), BenchError>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    ch.draw_series(LineSeries::new(pts.clone(), c.stroke_width(width)))
        .map_err(perr)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    ch.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
        .map_err(perr)?;
    Ok(())
}

/// The legend box of a chart.
fn legend<X: Ranged, Y: Ranged>(
    ch: &mut Chart<'_, X, Y>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Result<(), BenchError> {
    ch.configure_series_labels()
        .position(position)
        .label_font((FONT, font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(perr)
}

/// Item 4: per-call p50 vs maps present, one panel per placement.
pub fn dma_map(dir: &Path, rows: &[DmaRow]) -> Result<PathBuf, BenchError> {
    fonts()?;
    let path = dir.join("benchmarks-dma-map.png");
    let mut places: Vec<&'static str> = Vec::new();
    for r in rows {
        if !places.contains(&r.placement) {
            places.push(r.placement);
        }
    }
    let root = BitMapBackend::new(&path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let root = root
        .titled(
            "DMA_MAP / DMA_UNMAP per call (p50) vs maps already present",
            (FONT, 22),
        )
        .map_err(perr)?;
    let panels = root.split_evenly((1, places.len().max(1)));
    let xmax = (rows.iter().map(|r| r.maps_present).max().unwrap_or(1) as f64)
        .log10()
        .ceil()
        + 0.3;
    for (panel, place) in panels.iter().zip(&places) {
        let mine: Vec<&DmaRow> = rows.iter().filter(|r| r.placement == *place).collect();
        let ymax = mine
            .iter()
            .flat_map(|r| {
                [
                    r.map.p50_ns,
                    r.unmap.p50_ns,
                    r.raw_map.p50_ns,
                    r.raw_unmap.p50_ns,
                ]
            })
            .fold(0.0f64, f64::max)
            / 1000.0
            * 1.3;
        let mut ch = ChartBuilder::on(panel)
            .caption(place, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.3f64..xmax, 0f64..ymax.max(1.0))
            .map_err(perr)?;
        ch.configure_mesh()
            .x_desc("maps present (log)")
            .x_labels(8)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() > 1e-6 || *v < 0.0 {
                    String::new()
                } else {
                    format!("{}", 10f64.powf(*v).round())
                }
            })
            .y_desc("µs per call (p50)")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(perr)?;
        let series: [Series; 4] = [
            ("DMA_MAP (48 B + fd / 16 B)", |r| r.map.p50_ns),
            ("DMA_UNMAP (40 B / 40 B)", |r| r.unmap.p50_ns),
            ("raw ping-pong 48/16", |r| r.raw_map.p50_ns),
            ("raw ping-pong 40/40", |r| r.raw_unmap.p50_ns),
        ];
        for (i, (name, f)) in series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| ((r.maps_present as f64).log10(), f(r) / 1000.0))
                .collect();
            line(&mut ch, name, pts, color(i), if i >= 2 { 1 } else { 3 })?;
        }
        legend(&mut ch, SeriesLabelPosition::LowerRight, 13)?;
    }
    root.present().map_err(perr)?;
    Ok(path.clone())
}

/// Item 5: GB/s vs copy size for the model (single, burst) and memcpy.
pub fn throughput(dir: &Path, rows: &[ThroughputRow]) -> Result<PathBuf, BenchError> {
    fonts()?;
    let path = dir.join("benchmarks-pl330-throughput.png");
    let root = BitMapBackend::new(&path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let lg = |n: u64| n.max(1).ilog2() as i32;
    let xmin = lg(rows.iter().map(|r| r.size).min().unwrap_or(4096)) - 1;
    let xmax = lg(rows.iter().map(|r| r.size).max().unwrap_or(4096)) + 1;
    let ymin = rows
        .iter()
        .map(|r| r.model_gbps.min(r.memcpy_gbps))
        .fold(f64::INFINITY, f64::min)
        .max(1e-4)
        / 2.0;
    let ymax = rows
        .iter()
        .map(|r| r.model_gbps.max(r.memcpy_gbps))
        .fold(0.0f64, f64::max)
        * 2.0;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "PL330 model copy throughput vs host memcpy (same buffers)",
            (FONT, 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xmin..xmax, (ymin..ymax.max(ymin * 10.0)).log_scale())
        .map_err(perr)?;
    ch.configure_mesh()
        .x_desc("bytes per copy (log)")
        .y_desc("GB/s (log)")
        .x_labels((xmax - xmin + 1) as usize)
        .x_label_formatter(&|v| {
            if *v < 10 || v % 2 != 0 {
                String::new()
            } else {
                crate::throughput::size_name(1u64 << *v)
            }
        })
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(perr)?;
    let pick = |mode: &str, memcpy: bool| -> Vec<(i32, f64)> {
        rows.iter()
            .filter(|r| r.mode == mode)
            .map(|r| {
                (
                    lg(r.size),
                    if memcpy { r.memcpy_gbps } else { r.model_gbps },
                )
            })
            .collect()
    };
    let series = [
        ("model, single (8 B beats)", pick("single", false)),
        ("model, burst (Linux's choice)", pick("burst", false)),
        ("host memcpy", pick("burst", true)),
    ];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        line(&mut ch, name, pts, color(i), 3)?;
    }
    legend(&mut ch, SeriesLabelPosition::MiddleRight, 14)?;
    root.present().map_err(perr)?;
    Ok(path.clone())
}
