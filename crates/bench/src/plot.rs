//! `plot`: PNG line plots of the benchmark's outputs (recall against speed factor, SNR
//! and excerpt length from a scored report; identify latency and store size against
//! store hours from a `scale` report), drawn by a tiny renderer with a built-in 5x7
//! pixel font, so the harness needs only the `png` encoder and no system fonts.

use crate::scale::ScaleReport;
use crate::util::read_json;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct PlotArgs {
    /// report.json written by `score`/`run` for the `full` suite.
    pub report: Option<PathBuf>,
    /// JSON written by `scale`.
    pub scale: Option<PathBuf>,
    pub out: PathBuf,
}

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
/// Series colours (a colour-blind-safe set: blue, orange, green, purple).
const COLOURS: [Rgb; 4] = [[0, 114, 178], [230, 159, 0], [0, 158, 115], [204, 121, 167]];

/// An RGB image in memory.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: WHITE.repeat(width * height),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&c);
    }

    #[cfg(test)]
    fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// A line `thickness` pixels wide (Bresenham with a square brush).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thickness: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let half = thickness / 2;
        loop {
            self.fill_rect(x - half, y - half, thickness, thickness, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn disc(&mut self, cx: i64, cy: i64, r: i64, c: Rgb) {
        for y in -r..=r {
            for x in -r..=r {
                if x * x + y * y <= r * r {
                    self.set(cx + x, cy + y, c);
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel `scale` pixels square.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let left = x + i as i64 * 6 * scale;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(left + col * scale, y + r as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    fn encode_png(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut encoder = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        Ok(())
    }
}

/// Width in pixels of `s` drawn at `scale`.
fn text_width(s: &str, scale: i64) -> i64 {
    (s.chars().count() as i64 * 6 - 1).max(0) * scale
}

/// Rows of a 5x7 glyph, bit 4 the leftmost column; lower case is drawn as upper case and
/// unknown characters as a hollow box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ';' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// How values map onto an axis.
#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    Log10,
}

impl Scale {
    fn apply(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log10 => v.log10(),
        }
    }
}

struct Axis {
    label: String,
    min: f64,
    max: f64,
    scale: Scale,
    /// Tick positions with their labels.
    ticks: Vec<(f64, String)>,
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

struct Chart {
    title: String,
    x: Axis,
    y: Axis,
    series: Vec<Series>,
    /// A line of small print under the x axis label (sample sizes, provenance).
    note: String,
}

const WIDTH: usize = 760;
const HEIGHT: usize = 480;
const LEFT: i64 = 84;
const RIGHT: i64 = 24;
const TOP: i64 = 64;
const BOTTOM: i64 = 78;

impl Chart {
    fn render(&self) -> Canvas {
        let mut c = Canvas::new(WIDTH, HEIGHT);
        let (w, h) = (WIDTH as i64, HEIGHT as i64);
        let (px0, px1, py0, py1) = (LEFT, w - RIGHT, h - BOTTOM, TOP);
        let map = |axis: &Axis, v: f64, lo: i64, hi: i64| -> i64 {
            let (a, b) = (axis.scale.apply(axis.min), axis.scale.apply(axis.max));
            let t = (axis.scale.apply(v) - a) / (b - a);
            lo + ((hi - lo) as f64 * t).round() as i64
        };
        for (v, label) in &self.y.ticks {
            let y = map(&self.y, *v, py0, py1);
            c.line((px0, y), (px1, y), 1, GRID);
            c.text(px0 - 8 - text_width(label, 2), y - 7, label, 2, BLACK);
        }
        for (v, label) in &self.x.ticks {
            let x = map(&self.x, *v, px0, px1);
            c.line((x, py0), (x, py1), 1, GRID);
            c.text(x - text_width(label, 2) / 2, py0 + 8, label, 2, BLACK);
        }
        c.line((px0, py0), (px1, py0), 2, BLACK);
        c.line((px0, py0), (px0, py1), 2, BLACK);
        c.text(
            (w - text_width(&self.title, 2)) / 2,
            12,
            &self.title,
            2,
            BLACK,
        );
        c.text(8, TOP - 24, &self.y.label, 1, BLACK);
        c.text(
            (px0 + px1 - text_width(&self.x.label, 2)) / 2,
            py0 + 30,
            &self.x.label,
            2,
            BLACK,
        );
        c.text(px0, h - 16, &self.note, 1, BLACK);
        for (i, s) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let pts: Vec<(i64, i64)> = s
                .points
                .iter()
                .map(|&(x, y)| (map(&self.x, x, px0, px1), map(&self.y, y, py0, py1)))
                .collect();
            for pair in pts.windows(2) {
                c.line(pair[0], pair[1], 3, colour);
            }
            for &(x, y) in &pts {
                c.disc(x, y, 5, colour);
            }
            // Legend in the top margin, right-aligned, entries side by side.
            let entry_w = |s: &Series| text_width(&s.name, 2) + 44;
            let lx = px1 - self.series[i..].iter().map(entry_w).sum::<i64>() + 16;
            let ly = TOP - 20;
            c.line((lx, ly + 6), (lx + 20, ly + 6), 3, colour);
            c.text(lx + 28, ly, &s.name, 2, colour);
        }
        c
    }
}

/// Ticks every `step` from `min` to `max`, labelled with `decimals` decimals.
fn linear_ticks(min: f64, max: f64, step: f64, decimals: usize) -> Vec<(f64, String)> {
    let n = ((max - min) / step).round() as i64;
    (0..=n)
        .map(|i| {
            let v = min + step * i as f64;
            (v, format!("{v:.decimals$}"))
        })
        .collect()
}

/// Ticks at 1, 2 and 5 times the powers of ten within [min, max].
fn log_ticks(min: f64, max: f64) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(min.log10().floor());
    while decade <= max * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= min * 0.9999 && v <= max * 1.0001 {
                out.push((v, fmt_tick(v)));
            }
        }
        decade *= 10.0;
    }
    out
}

/// A tick value without trailing zeros (1.25, 0.5, 1000).
fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The recall of one condition of a scored report.
struct CondRecall {
    condition: String,
    found: u64,
    samples: u64,
}

/// The conditions of a scored report, and which split and suite it scored.
fn read_conditions(report: &Path) -> Result<(Vec<CondRecall>, String)> {
    let v: serde_json::Value = read_json(report)?;
    let which = format!(
        "{} split, {} suite",
        v["split"].as_str().unwrap_or("every"),
        v["suite"].as_str().unwrap_or("every")
    );
    let conds = v["conditions"]
        .as_array()
        .with_context(|| format!("{} has no conditions", report.display()))?
        .iter()
        .filter_map(|c| {
            Some(CondRecall {
                condition: c["condition"].as_str()?.to_string(),
                found: c["found"].as_u64()?,
                samples: c["samples"].as_u64()?,
            })
        })
        .filter(|c| c.samples > 0)
        .collect();
    Ok((conds, which))
}

/// (x, recall %, samples) of the conditions named `prefix` + number, sorted by x.
fn recall_series(conds: &[CondRecall], prefix: &str) -> Vec<(f64, f64, u64)> {
    let mut pts: Vec<(f64, f64, u64)> = conds
        .iter()
        .filter_map(|c| {
            let x: f64 = c.condition.strip_prefix(prefix)?.parse().ok()?;
            Some((x, 100.0 * c.found as f64 / c.samples as f64, c.samples))
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// The untransformed condition (8 s at 0 dB), shared by the three recall plots.
fn identity_point(conds: &[CondRecall]) -> Option<(f64, u64)> {
    conds
        .iter()
        .find(|c| c.condition == "speed_1.00")
        .map(|c| (100.0 * c.found as f64 / c.samples as f64, c.samples))
}

fn sample_note(points: &[(f64, f64, u64)], which: &str) -> String {
    let lo = points.iter().map(|p| p.2).min().unwrap_or(0);
    let hi = points.iter().map(|p| p.2).max().unwrap_or(0);
    format!("{lo}-{hi} samples per point ({which}): read trends, not single points")
}

fn recall_axis() -> Axis {
    Axis {
        label: "recall (%)".into(),
        min: 0.0,
        max: 100.0,
        scale: Scale::Linear,
        ticks: linear_ticks(0.0, 100.0, 20.0, 0),
    }
}

fn xy(points: &[(f64, f64, u64)]) -> Vec<(f64, f64)> {
    points.iter().map(|p| (p.0, p.1)).collect()
}

fn recall_charts(conds: &[CondRecall], which: &str) -> Vec<(&'static str, Chart)> {
    let identity = identity_point(conds);
    let with_identity = |mut pts: Vec<(f64, f64, u64)>, x: f64| {
        if let Some((r, n)) = identity
            && !pts.iter().any(|p| p.0 == x)
        {
            pts.push((x, r, n));
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        pts
    };
    let speed = recall_series(conds, "speed_");
    let tempo = with_identity(recall_series(conds, "tempo_"), 1.0);
    let snr = with_identity(recall_series(conds, "snr_"), 0.0);
    let len = with_identity(recall_series(conds, "len_"), 8.0);
    let mut all_speed = speed.clone();
    all_speed.extend(tempo.iter().copied());
    let mut charts = Vec::new();
    if !speed.is_empty() {
        charts.push((
            "recall_speed.png",
            Chart {
                title: "Recall against speed factor (8 s at 0 dB)".into(),
                x: Axis {
                    label: "factor (log scale)".into(),
                    min: 0.5,
                    max: 2.0,
                    scale: Scale::Log10,
                    ticks: [0.5, 0.7, 0.85, 1.0, 1.25, 1.4, 2.0]
                        .iter()
                        .map(|&v| (v, fmt_tick(v)))
                        .collect(),
                },
                y: recall_axis(),
                series: vec![
                    Series {
                        name: "sox speed".into(),
                        points: xy(&speed),
                    },
                    Series {
                        name: "rubberband tempo".into(),
                        points: xy(&tempo),
                    },
                ],
                note: sample_note(&all_speed, which),
            },
        ));
    }
    if !snr.is_empty() {
        charts.push((
            "recall_snr.png",
            Chart {
                title: "Recall against sample-to-rest ratio (8 s)".into(),
                x: Axis {
                    label: "SNR (dB)".into(),
                    min: -15.0,
                    max: 6.0,
                    scale: Scale::Linear,
                    ticks: [-15.0, -10.0, -6.0, -3.0, 0.0, 6.0]
                        .iter()
                        .map(|&v| (v, format!("{v:+.0}")))
                        .collect(),
                },
                y: recall_axis(),
                series: vec![Series {
                    name: "untransformed".into(),
                    points: xy(&snr),
                }],
                note: sample_note(&snr, which),
            },
        ));
    }
    if !len.is_empty() {
        charts.push((
            "recall_length.png",
            Chart {
                title: "Recall against excerpt length (0 dB)".into(),
                x: Axis {
                    label: "excerpt (s, log scale)".into(),
                    min: 1.0,
                    max: 30.0,
                    scale: Scale::Log10,
                    ticks: [1.0, 2.0, 4.0, 8.0, 15.0, 30.0]
                        .iter()
                        .map(|&v| (v, fmt_tick(v)))
                        .collect(),
                },
                y: recall_axis(),
                series: vec![Series {
                    name: "untransformed".into(),
                    points: xy(&len),
                }],
                note: sample_note(&len, which),
            },
        ));
    }
    charts
}

/// Axis bounds of the positive values, widened to whole 1-2-5 steps for a log axis.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    let floor = |v: f64| {
        let d = 10f64.powf(v.log10().floor());
        [5.0, 2.0, 1.0]
            .iter()
            .map(|m| m * d)
            .find(|&t| t <= v)
            .unwrap_or(d)
    };
    let ceil = |v: f64| {
        let d = 10f64.powf(v.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * d)
            .find(|&t| t >= v)
            .unwrap_or(10.0 * d)
    };
    (floor(lo), ceil(hi))
}

fn scale_charts(report: &ScaleReport) -> Vec<(&'static str, Chart)> {
    let cps = &report.checkpoints;
    if cps.is_empty() {
        return Vec::new();
    }
    let hours: Vec<f64> = cps.iter().map(|c| c.hours).collect();
    let (hmin, hmax) = log_bounds(hours.iter().copied());
    let hours_axis = || Axis {
        label: "store size (hours of audio, log scale)".into(),
        min: hmin,
        max: hmax,
        scale: Scale::Log10,
        ticks: log_ticks(hmin, hmax),
    };
    // Latency of the long query(ies) and the median over the short ones.
    let long: Vec<(f64, f64)> = cps
        .iter()
        .filter_map(|c| {
            let q = c.queries.iter().find(|q| !q.planted)?;
            Some((c.hours, q.median_s))
        })
        .collect();
    let short: Vec<(f64, f64)> = cps
        .iter()
        .filter_map(|c| {
            let m: Vec<f64> = c
                .queries
                .iter()
                .filter(|q| q.planted)
                .map(|q| q.median_s)
                .collect();
            crate::util::median(&m).map(|m| (c.hours, m))
        })
        .collect();
    let (lmin, lmax) = log_bounds(long.iter().chain(&short).map(|p| p.1));
    let size: Vec<(f64, f64)> = cps
        .iter()
        .map(|c| (c.hours, c.store_bytes as f64 / 1e9))
        .collect();
    let (smin, smax) = log_bounds(size.iter().map(|p| p.1));
    vec![
        (
            "latency_scale.png",
            Chart {
                title: "Identify latency against store size".into(),
                x: hours_axis(),
                y: Axis {
                    label: "median wall time per query (s, log scale)".into(),
                    min: lmin,
                    max: lmax,
                    scale: Scale::Log10,
                    ticks: log_ticks(lmin, lmax),
                },
                series: vec![
                    Series {
                        name: "3 min song".into(),
                        points: long,
                    },
                    Series {
                        name: "30-45 s query".into(),
                        points: short,
                    },
                ],
                note: format!(
                    "cratedigger identify as a separate process, page cache warm, {} cores; synthetic postings above {:.1} h",
                    report.cores, report.real_hours
                ),
            },
        ),
        (
            "store_scale.png",
            Chart {
                title: "LMDB store size against hours of audio".into(),
                x: hours_axis(),
                y: Axis {
                    label: "file size (GB, log scale)".into(),
                    min: smin,
                    max: smax,
                    scale: Scale::Log10,
                    ticks: log_ticks(smin, smax),
                },
                series: vec![Series {
                    name: "fully merged".into(),
                    points: size,
                }],
                note: "data.mdb after compact, side data (peak lists) included".into(),
            },
        ),
    ]
}

pub fn run_plot(a: &PlotArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut charts = Vec::new();
    if let Some(report) = &a.report {
        let (conds, which) = read_conditions(report)?;
        charts.extend(recall_charts(&conds, &which));
    }
    if let Some(scale) = &a.scale {
        charts.extend(scale_charts(&read_json::<ScaleReport>(scale)?));
    }
    if charts.is_empty() {
        anyhow::bail!("nothing to plot: give --report and/or --scale");
    }
    for (name, chart) in charts {
        let path = a.out.join(name);
        chart.render().encode_png(&path)?;
        eprintln!("plot: wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_text_land_where_asked() {
        let mut c = Canvas::new(40, 20);
        c.line((0, 0), (39, 19), 1, BLACK);
        assert_eq!(c.get(0, 0), BLACK);
        assert_eq!(c.get(39, 19), BLACK);
        assert_eq!(c.get(39, 0), WHITE);
        let mut t = Canvas::new(20, 10);
        t.text(0, 0, "1", 1, BLACK);
        // The 1 has its stem in the middle column and a foot three pixels wide.
        assert_eq!(t.get(2, 3), BLACK);
        assert_eq!(t.get(0, 3), WHITE);
        assert_eq!(t.get(1, 6), BLACK);
        assert_eq!(t.get(3, 6), BLACK);
        assert_eq!(t.get(4, 6), WHITE);
        assert_eq!(text_width("ab", 2), 22);
    }

    #[test]
    fn ticks_and_bounds() {
        let ticks: Vec<f64> = log_ticks(10.0, 1000.0).iter().map(|t| t.0).collect();
        assert_eq!(ticks, vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(log_bounds([7.4, 1003.0].into_iter()), (5.0, 2000.0));
        assert_eq!(linear_ticks(0.0, 100.0, 20.0, 0).len(), 6);
        assert_eq!(fmt_tick(1.25), "1.25");
        assert_eq!(fmt_tick(0.5), "0.5");
        assert_eq!(fmt_tick(1000.0), "1000");
    }

    #[test]
    fn recall_series_parses_condition_names_and_adds_the_identity() {
        let conds = vec![
            CondRecall {
                condition: "snr_+6".into(),
                found: 3,
                samples: 3,
            },
            CondRecall {
                condition: "snr_-3".into(),
                found: 0,
                samples: 3,
            },
            CondRecall {
                condition: "speed_1.00".into(),
                found: 3,
                samples: 4,
            },
        ];
        let charts = recall_charts(&conds, "tune split, full suite");
        let snr = charts
            .iter()
            .find(|c| c.0 == "recall_snr.png")
            .expect("snr chart");
        assert_eq!(
            snr.1.series[0].points,
            vec![(-3.0, 0.0), (0.0, 75.0), (6.0, 100.0)]
        );
    }

    #[test]
    fn a_chart_encodes_as_png() {
        let dir = std::env::temp_dir().join(format!("cd-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let chart = Chart {
            title: "t".into(),
            x: Axis {
                label: "x".into(),
                min: 1.0,
                max: 100.0,
                scale: Scale::Log10,
                ticks: log_ticks(1.0, 100.0),
            },
            y: recall_axis(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(1.0, 10.0), (100.0, 90.0)],
            }],
            note: String::new(),
        };
        let path = dir.join("t.png");
        chart.render().encode_png(&path).expect("png");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).ok();
    }
}
