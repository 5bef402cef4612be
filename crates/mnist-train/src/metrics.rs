//! The metrics of a run: one JSON line per logged step, and a PNG plot of the curves.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One logged step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// Steps completed before this one (0-based index of the step).
    pub step: u64,
    /// Training loss of this step's batch (with dropout).
    pub loss: f64,
    /// Accuracy on this step's batch before the update, without dropout (as the seed prints).
    pub train_accuracy: f64,
    /// Training images per second since the run (or the resume) started.
    pub images_per_sec: f64,
    /// Seconds of training so far, over all sessions of the run (a resumed run goes on from
    /// the training time its checkpoint recorded; the pauses between sessions are not
    /// counted).
    pub elapsed_s: f64,
}

/// The metrics file of a run, `metrics.jsonl`, appended line by line.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    rows: Vec<MetricRow>,
    /// What [`MetricsLog::resume`] found missing or unreadable, as a sentence.
    lost: Option<String>,
}

impl MetricsLog {
    /// A new, empty log at `path` (any old file is replaced).
    pub fn create(path: &Path) -> Result<Self> {
        mnist_model::artifact::write_atomic(path, b"")?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            rows: Vec::new(),
            lost: None,
        })
    }

    /// Reopens the log of an interrupted run, keeping only the rows before `step` (rows
    /// logged after the checkpoint are redone by the resumed run). The file is rewritten
    /// atomically.
    ///
    /// A last line cut short (a crash while it was written) is dropped without a word.
    /// Other lines that are not metric rows are dropped too, and the rows after them kept;
    /// those lines, and a file missing or without the rows of the steps before `step`
    /// (step 0 is always logged), are described by [`MetricsLog::lost`].
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        // A row is about 150 bytes: a million steps logged one by one is 150 MB.
        let (text, missing) = match mnist_fs::read_to_string_capped(path, 1 << 30) {
            Ok(t) => (t, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), true),
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        // The lines kept are written back as they were (parsed and written again, a float
        // could come back one unit in the last place off).
        let cut_short = !text.is_empty() && !text.ends_with('\n');
        let (mut kept, mut unreadable, mut first_unreadable): (Vec<(&str, MetricRow)>, usize, Option<usize>) = (Vec::new(), 0, None);
        let mut lines = text.lines().enumerate().peekable();
        while let Some((at, line)) = lines.next() {
            match serde_json::from_str::<MetricRow>(line) {
                Ok(row) if row.step < step => kept.push((line, row)),
                Ok(_) => {}
                Err(_) if line.trim().is_empty() || (cut_short && lines.peek().is_none()) => {}
                Err(_) => {
                    unreadable += 1;
                    first_unreadable.get_or_insert(at + 1);
                }
            }
        }
        let mut out = String::new();
        for (line, _) in &kept {
            out.push_str(line);
            out.push('\n');
        }
        let mut lost = Vec::new();
        if let Some(first) = first_unreadable {
            let what = if unreadable == 1 { format!("a line that is no metric row (line {first})") } else { format!("{unreadable} lines that are no metric rows (the first is line {first})") };
            lost.push(format!("{}: dropped {what}, kept the rows around it", path.display()));
        }
        if step > 0 && kept.is_empty() {
            let why = if missing { "is missing" } else { "holds no row from before the checkpoint" };
            lost.push(format!("{} {why}: the metrics of the run's first {step} steps are lost, and its plot will start at step {step}", path.display()));
        }
        let rows = kept.into_iter().map(|(_, row)| row).collect();
        mnist_model::artifact::write_atomic(path, out.as_bytes())?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            rows,
            lost: (!lost.is_empty()).then(|| lost.join("; ")),
        })
    }

    /// What [`MetricsLog::resume`] found missing or unreadable in the file, as a sentence
    /// for the user: `None` when it held a row for every line but a last one cut short,
    /// and some row before the checkpoint.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Appends a row to the file and the memory.
    pub fn push(&mut self, row: MetricRow) -> Result<()> {
        let write_err = |source| Error::Write {
            path: self.path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new().append(true).create(true).open(&self.path).map_err(write_err)?;
        let mut line = serde_json::to_string(&row).expect("rows serialise");
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(write_err)?;
        self.rows.push(row);
        Ok(())
    }

    /// All rows so far.
    pub fn rows(&self) -> &[MetricRow] {
        &self.rows
    }
}

/// System fonts tried for the plot's text, in order.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font with plotters once; false when none is found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|p| match fs::read(p) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            Err(_) => false,
        })
    })
}

/// Width and height of the plot, in pixels.
const PLOT_SIZE: (u32, u32) = (1000, 420);

/// Draws loss and training accuracy against the step into a PNG, written atomically
/// like every artifact. Without a system font the curves are drawn without text.
pub fn plot(rows: &[MetricRow], path: &Path) -> Result<()> {
    let plot_err = |message: String| Error::Plot { path: path.to_path_buf(), message };
    let (w, h) = PLOT_SIZE;
    let mut rgb = vec![0u8; 3 * w as usize * h as usize];
    draw(rows, &mut rgb, font_available()).map_err(plot_err)?;
    let image = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| plot_err("the drawing is not of the plot's size".into()))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(|e| plot_err(e.to_string()))?;
    mnist_model::artifact::write_atomic(path, png.get_ref())?;
    Ok(())
}

fn draw(rows: &[MetricRow], rgb: &mut [u8], text: bool) -> std::result::Result<(), String> {
    let root = BitMapBackend::with_buffer(rgb, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(500);
    let last = rows.last().map_or(1, |r| r.step.max(1));
    let err = |e: &dyn std::fmt::Display| e.to_string();

    // Loss on a log scale: it falls by orders of magnitude.
    let max_loss = rows.iter().map(|r| r.loss).fold(f64::MIN_POSITIVE, f64::max) * 1.2;
    let min_loss = rows.iter().map(|r| r.loss).filter(|l| *l > 0.0).fold(max_loss, f64::min) / 1.2;
    let mut chart = panel(&left, "training loss (log scale)", text)
        .build_cartesian_2d(0u64..last, (min_loss..max_loss).log_scale())
        .map_err(|e| err(&e))?;
    mesh(&mut chart.configure_mesh(), text).map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(rows.iter().map(|r| (r.step, r.loss.max(min_loss))), RED.stroke_width(2)))
        .map_err(|e| err(&e))?;

    let min_acc = rows.iter().map(|r| r.train_accuracy).fold(1.0f64, f64::min).min(0.9);
    let mut chart = panel(&right, "training accuracy (batch, no dropout)", text)
        .build_cartesian_2d(0u64..last, min_acc..1.0)
        .map_err(|e| err(&e))?;
    mesh(&mut chart.configure_mesh(), text).map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(rows.iter().map(|r| (r.step, r.train_accuracy)), BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn panel<'a, 'b>(area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>, title: &str, text: bool) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder.caption(title, ("sans-serif", 18)).x_label_area_size(32).y_label_area_size(56);
    }
    builder
}

fn mesh<X, Y>(mesh: &mut plotters::chart::MeshStyle<'_, '_, X, Y, BitMapBackend<'_>>, text: bool) -> std::result::Result<(), String>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = u64> + plotters::coord::ranged1d::ValueFormatter<u64>,
    Y: plotters::coord::ranged1d::Ranged + plotters::coord::ranged1d::ValueFormatter<<Y as plotters::coord::ranged1d::Ranged>::ValueType>,
{
    if text {
        mesh.x_desc("step");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| e.to_string())
}
