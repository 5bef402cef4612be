//! Inference on burn-flex: single-image latency (goal: under 1 ms on 2 cores) and batch
//! throughput.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use burn_flex::Flex;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mnist_infer::{Classifier, Pixels};
use mnist_model::CnnConfig;

// As the `mnist` binary: see its main.rs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn predict(c: &mut Criterion) {
    let device = Default::default();
    let config = CnnConfig::new();
    let model = config.init::<Flex>(1, &device).expect("seed config is valid");
    let classifier = Classifier::from_model(model, config, &device).expect("10 classes");
    let data = mnist_data::Locator::offline(None)
        .load(mnist_data::DatasetKind::Sample)
        .expect("bundled sample");
    let images: Vec<Pixels> = (0..1000).map(|i| *data.test.image(i)).collect();

    c.bench_function("predict 1 image (flex)", |b| b.iter(|| classifier.predict(&images[0])));
    let mut group = c.benchmark_group("predict batch (flex)");
    for n in [100usize, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| classifier.predict_batch(&images[..n]))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = predict
}
criterion_main!(benches);
