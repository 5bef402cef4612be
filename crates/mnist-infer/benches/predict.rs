//! Inference on burn-flex: single-image latency (goal: under 1 ms on 2 cores) and batch
//! throughput.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use burn_flex::Flex;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mnist_infer::{Classifier, Pixels};
use mnist_model::CnnConfig;
use mnist_model::artifact::Manifest;

// As the `mnist` binary: see its main.rs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn predict(c: &mut Criterion) {
    let device = Default::default();
    let config = CnnConfig::new();
    let model = config.init::<Flex>(1, &device).expect("seed config is valid");
    let classifier = Classifier::from_model(model, Manifest::from_config(config), &device).expect("10 classes");
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

/// Preprocessing of image files, as `mnist predict` does before classifying: a 280x280
/// grey page from the reported cases, and a 4000x3000 photo-sized page (averaged down to
/// 800 pixels first).
fn preprocess(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cases/images/repro_seven_bg128.png");
    let small = std::fs::read(&path).expect("the case image");
    let page = image::open(&path).expect("a PNG").to_luma8();
    let big = image::imageops::resize(&page, 4000, 3000, image::imageops::FilterType::Triangle);
    let mut photo = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut photo), image::ImageFormat::Png).expect("encodes");
    let mut group = c.benchmark_group("preprocess");
    for (name, bytes) in [("280x280 PNG", &small), ("4000x3000 PNG", &photo)] {
        group.bench_function(name, |b| b.iter(|| mnist_infer::preprocess::preprocess_bytes(bytes, name.as_ref()).expect("a digit")));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = predict, preprocess
}
criterion_main!(benches);
