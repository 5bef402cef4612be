//! Training of the mnist-rs network, generic over a Burn autodiff backend.
//!
//! [`train`] runs the seed recipe (or any [`TrainConfig`]) and fills an artifact
//! directory ([`mnist_model::artifact`]) — config, metrics, plot, checkpoint, weights and
//! `report.json` — that [`mnist_infer`] and `mnist eval` read back. The loop is our own,
//! not burn-train's `Learner`: runs are counted in steps (the seed's 30,000), resume exactly
//! mid-epoch, and checkpoint into one verified file. Runs are
//! reproducible: the seed fixes the initial weights, the order of the examples and every
//! dropout mask, so a fixed seed gives the same metrics on a CPU backend run after run, and
//! a run resumed from a checkpoint ends where an uninterrupted one does.
//!
//! ```no_run
//! use burn::backend::Autodiff;
//! use burn_flex::Flex;
//! use mnist_data::{DatasetKind, Locator};
//! use mnist_train::{Outcome, TrainConfig, TrainOptions, train};
//!
//! let data = Locator::offline(None).load(DatasetKind::Sample)?;
//! let config = TrainConfig::new().with_steps(2_000);
//! let options = TrainOptions::new("artifacts/quick", "flex");
//! match train::<Autodiff<Flex>>(&config, &data, &options, &Default::default())? {
//!     Outcome::Finished(report) => println!("test accuracy {:.4}", report.test.accuracy),
//!     // Stopped early (`options.stop`, or the progress lines could not be written): a
//!     // checkpoint holds the step, and a call with `options.resume` set goes on from it.
//!     stopped => println!("not finished: {stopped:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
mod config;
mod error;
mod metrics;
mod train;

pub use config::TrainConfig;
pub use error::{Error, ExistingRun, NoCheckpoint, NotResumable, Result};
pub use metrics::{MetricRow, MetricsLog, plot};
pub use train::{Outcome, ProgressMode, Report, TrainOptions, check_out_dir, check_start, finished_files, locked_by_another, make_out_dir, resumable, kernels_in_use, optimizer, train, train_step};

#[cfg(test)]
mod tests;
