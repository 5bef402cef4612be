//! Training throughput of the seed network on burn-flex: one Adam step (forward, backward,
//! update) at batch 50 and 512, and evaluation over 10,000 images.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn_flex::Flex;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mnist_data::Split;
use mnist_model::{Cnn, CnnConfig, dropout_mask, input};

type B = Autodiff<Flex>;

// As the `mnist` binary: see its main.rs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn train_step(c: &mut Criterion) {
    let device = Default::default();
    let data = mnist_data::Locator::offline(None)
        .load(mnist_data::DatasetKind::Sample)
        .expect("bundled sample");
    let config = CnnConfig::new();
    let mut group = c.benchmark_group("train step (flex)");
    group.sample_size(10);
    for batch in [50usize, 512] {
        let mut model: Cnn<B> = config.init(1, &device).expect("valid");
        let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<B, Cnn<B>>();
        let indices: Vec<usize> = (0..batch).collect();
        let mut step = 0u64;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let x = data.train.gather(&indices).expect("in range");
                let (images, labels) = (input::images::<B>(&x.pixels, &device), input::labels::<B>(&x.labels, &device));
                let mask = dropout_mask::<B>(batch, config.hidden, config.dropout, 3, step, &device);
                step += 1;
                let loss = model.loss(model.forward_train(images, mask), labels);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(1e-4, model.clone(), grads);
                // Wait for the update, as a training loop does at its next step.
                model.fc2.bias.as_ref().expect("bias").val().into_data()
            })
        });
    }
    group.finish();

    let model = config.init::<B>(1, &device).expect("valid").valid();
    let split: Split = data.test.clone();
    let ten_k = Split::new(
        split.images().iter().copied().cycle().take(10_000 * 784).collect(),
        split.labels().iter().copied().cycle().take(10_000).collect(),
    )
    .expect("consistent");
    let mut group = c.benchmark_group("evaluate (flex)");
    group.sample_size(10).throughput(Throughput::Elements(10_000));
    group.bench_function("10k images, batch 500", |b| {
        b.iter(|| mnist_infer::evaluate(&model, &ten_k, 500, &device).expect("evaluates"))
    });
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
