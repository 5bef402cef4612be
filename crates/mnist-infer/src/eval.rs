//! Accuracy, loss, per-class accuracy and the confusion matrix of a network on a split.

use std::time::Instant;

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use mnist_data::Split;
use mnist_model::{Cnn, input};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How well a network does on a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Images evaluated.
    pub images: usize,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Accuracy on the images of each class (NaN-free: 0 for a class with no image).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`: image counts.
    pub confusion: Vec<Vec<u64>>,
    /// Wall time of the evaluation, seconds.
    pub seconds: f64,
    /// Images per second.
    pub images_per_sec: f64,
}

/// Evaluates `model` on `split` in batches of `batch_size` (no dropout).
///
/// # Errors
/// [`Error::Evaluation`] for an empty split, a batch size of 0, weights holding NaN or
/// infinity, or a network that does not score the dataset's 10 classes.
pub fn evaluate<B: Backend>(model: &Cnn<B>, split: &Split, batch_size: usize, device: &B::Device) -> Result<Evaluation> {
    if split.is_empty() {
        return Err(Error::Evaluation("cannot evaluate on an empty split".into()));
    }
    if let Some(tensor) = mnist_model::weights::first_non_finite(model) {
        return Err(Error::Evaluation(format!(
            "cannot evaluate a network whose tensor `{tensor}` holds NaN or infinite values (the training diverged)"
        )));
    }
    if model.classes() != mnist_data::CLASSES {
        return Err(Error::Evaluation(format!(
            "the network scores {} classes but the dataset has {} (labels 0..=9)",
            model.classes(),
            mnist_data::CLASSES
        )));
    }
    let start = Instant::now();
    let mut confusion = vec![vec![0u64; 10]; 10];
    let mut loss_sum = 0.0f64;
    let mut seen = 0usize;
    let chunks = split.chunks(batch_size).map_err(|e| Error::Evaluation(e.to_string()))?;
    for (pixels, labels) in chunks {
        let n = labels.len();
        let logits = model.forward(input::images::<B>(pixels, device));
        let loss = model.loss(logits.clone(), input::labels::<B>(labels, device));
        let predicted = logits.argmax(1).into_data();
        loss_sum += loss.into_scalar().elem::<f64>() * n as f64;
        for (i, p) in predicted.iter::<i64>().enumerate() {
            let truth = usize::from(split.label(seen + i));
            confusion[truth][p.clamp(0, 9) as usize] += 1;
        }
        seen += n;
    }
    let correct: u64 = (0..10).map(|c| confusion[c][c]).sum();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: u64 = row.iter().sum();
            if total == 0 { 0.0 } else { row[c] as f64 / total as f64 }
        })
        .collect();
    let seconds = start.elapsed().as_secs_f64();
    Ok(Evaluation {
        images: seen,
        accuracy: correct as f64 / seen as f64,
        loss: loss_sum / seen as f64,
        per_class_accuracy,
        confusion,
        seconds,
        images_per_sec: seen as f64 / seconds.max(1e-9),
    })
}

impl Evaluation {
    /// A human-readable table: accuracy, loss, per-class accuracy and the confusion matrix.
    pub fn table(&self, class_names: &[String]) -> String {
        let mut out = format!(
            "test accuracy {:.4} ({} images), loss {:.4}\n\nper class:\n",
            self.accuracy, self.images, self.loss
        );
        for (c, acc) in self.per_class_accuracy.iter().enumerate() {
            // A name that is the class's number (the digits) is not printed twice.
            let name = class_names.get(c).map_or("", String::as_str);
            let name = if name == c.to_string() { "" } else { name };
            out.push_str(&format!("  {:>2} {:<12} {:.4}\n", c, name, acc));
        }
        out.push_str("\nconfusion (rows: true class, columns: predicted):\n      ");
        for c in 0..10 {
            out.push_str(&format!("{c:>6}"));
        }
        out.push('\n');
        for (c, row) in self.confusion.iter().enumerate() {
            out.push_str(&format!("  {c:>2}  "));
            for v in row {
                out.push_str(&format!("{v:>6}"));
            }
            out.push('\n');
        }
        out
    }
}
