//! The inference thread and its queue: requests from any number of connections become
//! one forward pass per batch.
//!
//! One image costs nearly as much as a small batch on this network (the weights are
//! read either way), so the thread takes the first request waiting, then everything
//! queued behind it, then, while other requests are on their way (their body received in
//! full, their image being decoded: [`Batcher::arriving`]; a body still coming in is not
//! waited for, so a client slow to send one holds up nobody), waits up to
//! [`ServeConfig::batch_wait_us`] for them, up to [`ServeConfig::max_batch`] images, and
//! answers them all from one [`Classifier::predict_batch`]. A request alone waits for
//! nobody. The async runtime never runs the network: a handler queues its image and
//! awaits a one-shot reply.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use mnist_infer::{Classifier, Pixels, Prediction};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::ServeConfig;
use crate::error::{Error, Result};

/// Why a request got no prediction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// The queue is full: more requests are waiting than `queue` allows.
    Busy(usize),
    /// The inference thread has stopped (the server is shutting down).
    Stopped,
    /// The forward pass panicked; the message, for the answer.
    Failed(String),
}

/// Counters of the inference thread, for `GET /healthz` and the tests.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// Images classified.
    pub images: AtomicU64,
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Images in the largest batch so far.
    pub largest_batch: AtomicU64,
}

struct Job {
    pixels: Pixels,
    reply: oneshot::Sender<std::result::Result<Prediction, String>>,
}

/// The sending side of the inference queue; cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: SyncSender<Job>,
    capacity: usize,
    stats: Arc<Stats>,
    /// Requests received whose image is not queued yet.
    arriving: Arc<AtomicUsize>,
}

/// A request on its way to the queue (counted until it is queued or dropped).
pub(crate) struct Arriving(Arc<AtomicUsize>);

impl Drop for Arriving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Batcher {
    /// Starts the inference thread, which owns `classifier` until every [`Batcher`]
    /// clone is dropped.
    pub fn start<B: Backend>(classifier: Classifier<B>, config: &ServeConfig) -> Result<Self>
    where
        Classifier<B>: Send + 'static,
    {
        let (queue, jobs) = sync_channel(config.queue);
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        let arriving = Arc::new(AtomicUsize::new(0));
        let gathering = Gathering { max: config.max_batch, wait: Duration::from_micros(config.batch_wait_us), arriving: Arc::clone(&arriving) };
        std::thread::Builder::new()
            .name("mnist-inference".into())
            .spawn(move || run(&classifier, &jobs, &gathering, &thread_stats))
            .map_err(|source| Error::Start { what: "the inference thread", source })?;
        Ok(Batcher { queue, capacity: config.queue, stats, arriving })
    }

    /// Counts a request as on its way until the guard is dropped or handed to
    /// [`predict`](Self::predict): the inference thread waits for such requests.
    pub fn arriving(&self) -> Arriving {
        self.arriving.fetch_add(1, Ordering::Relaxed);
        Arriving(Arc::clone(&self.arriving))
    }

    /// Classifies `pixels` in the next batch; the request stops counting as arriving once
    /// its image is queued.
    pub async fn predict(&self, pixels: Pixels, arriving: Arriving) -> std::result::Result<Prediction, Refusal> {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.try_send(Job { pixels, reply });
        drop(arriving);
        match queued {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Refusal::Busy(self.capacity)),
            Err(TrySendError::Disconnected(_)) => return Err(Refusal::Stopped),
        }
        match answer.await {
            Ok(Ok(prediction)) => Ok(prediction),
            Ok(Err(message)) => Err(Refusal::Failed(message)),
            Err(_) => Err(Refusal::Stopped),
        }
    }

    /// The inference thread's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// How the inference thread gathers a batch.
struct Gathering {
    max: usize,
    wait: Duration,
    arriving: Arc<AtomicUsize>,
}

/// The inference thread's loop: until every sender is gone, gather a batch and answer it.
fn run<B: Backend>(classifier: &Classifier<B>, jobs: &Receiver<Job>, gathering: &Gathering, stats: &Stats) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        gather(jobs, &mut batch, gathering);
        // A client that gave up (its request timed out, its connection closed) needs no
        // answer.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let images: Vec<Pixels> = batch.iter().map(|job| job.pixels).collect();
        // The network only reads its weights: after a panic it is as it was, and the
        // requests of the next batch deserve their answers.
        match catch_unwind(AssertUnwindSafe(|| classifier.predict_batch(&images))) {
            Ok(predictions) if predictions.len() == batch.len() => {
                stats.images.fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.largest_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
                for (job, prediction) in batch.into_iter().zip(predictions) {
                    let _ = job.reply.send(Ok(prediction));
                }
            }
            outcome => {
                let message = match outcome {
                    Ok(predictions) => format!("the network answered {} of {} images", predictions.len(), images.len()),
                    Err(panic) => panic_message(panic.as_ref()),
                };
                for job in batch {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Adds to `batch` what is already queued, then, while requests are arriving, what
/// arrives within `wait`, up to `max`.
fn gather(jobs: &Receiver<Job>, batch: &mut Vec<Job>, gathering: &Gathering) {
    let max = gathering.max;
    while batch.len() < max {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    // Checked this often for requests that stopped arriving (refused, or given up).
    const POLL: Duration = Duration::from_micros(100);
    let deadline = Instant::now() + gathering.wait;
    while batch.len() < max && gathering.arriving.load(Ordering::Relaxed) > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match jobs.recv_timeout(left.min(POLL)) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("the network failed on this batch ({text}); the server goes on")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_flex::Flex;
    use mnist_model::CnnConfig;
    use mnist_model::artifact::Manifest;

    fn classifier() -> Classifier<Flex> {
        let config = CnnConfig::new().with_conv1_channels(4).with_conv2_channels(8).with_hidden(16);
        let device = Default::default();
        let model = config.init::<Flex>(7, &device).unwrap();
        Classifier::from_model(model, Manifest::from_config(config), &device).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn concurrent_requests_share_forward_passes_and_get_their_own_answers() {
        let classifier = classifier();
        let images: Vec<Pixels> = (0..40u8).map(|i| std::array::from_fn(|p| (p as u8).wrapping_mul(i).wrapping_add(i))).collect();
        let alone: Vec<Prediction> = images.iter().map(|image| classifier.predict(image)).collect();
        let config = ServeConfig::new().with_max_batch(16).with_batch_wait_us(20_000);
        let batcher = Batcher::start(classifier, &config).unwrap();
        let answers = runtime().block_on(async {
            let tasks: Vec<_> = images
                .iter()
                .map(|&image| {
                    let batcher = batcher.clone();
                    let arriving = batcher.arriving();
                    tokio::spawn(async move { batcher.predict(image, arriving).await })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap().unwrap());
            }
            answers
        });
        for (i, (batched, alone)) in answers.iter().zip(&alone).enumerate() {
            assert_eq!(batched.digit, alone.digit, "image {i}");
            for (b, a) in batched.probabilities.iter().zip(&alone.probabilities) {
                assert!((b - a).abs() < 1e-4, "image {i}: {b} batched, {a} alone");
            }
        }
        let stats = batcher.stats();
        assert_eq!(stats.images.load(Ordering::Relaxed), 40);
        let batches = stats.batches.load(Ordering::Relaxed);
        assert!((3..40).contains(&batches), "{batches} forward passes for 40 requests, at most 16 each");
        assert!(stats.largest_batch.load(Ordering::Relaxed) <= 16);
    }

    #[test]
    fn a_full_queue_refuses_and_a_stopped_thread_says_so() {
        let (queue, jobs) = sync_channel(1);
        let batcher = Batcher { queue, capacity: 1, stats: Arc::default(), arriving: Arc::default() };
        let rt = runtime();
        // Nobody takes jobs: the first fills the queue, the second is refused at once.
        let (reply, _answer) = oneshot::channel();
        batcher.queue.try_send(Job { pixels: [0; 784], reply }).unwrap();
        assert_eq!(rt.block_on(batcher.predict([0; 784], batcher.arriving())), Err(Refusal::Busy(1)));
        drop(jobs);
        assert_eq!(rt.block_on(batcher.predict([0; 784], batcher.arriving())), Err(Refusal::Stopped));
        assert_eq!(batcher.arriving.load(Ordering::Relaxed), 0, "refused requests stop counting");
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        assert!(panic_message(&"index out of bounds").contains("(index out of bounds)"));
        assert!(panic_message(&String::from("boom")).contains("(boom)"));
        assert!(panic_message(&42).contains("no message"));
    }
}
