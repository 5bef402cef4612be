//! The fused convolution block on burn-flex (`mnist_kernels::conv_relu_pool`) at
//! the seed network's two shapes, batch 50: forward alone (inference), and forward +
//! backward as training runs it (conv1's input needs no gradient, conv2's does); and fc1
//! (`mnist_kernels::fully_connected`, `[50, 3136] x [3136, 1024]`) forward + backward against
//! Burn's `Linear` on the same backend, with a dense output gradient and one three quarters
//! zero as in training; and the three at batch 1, as one prediction runs
//! them (inference: no autodiff).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use burn_autodiff::Autodiff;
use burn::tensor::{Distribution, Tensor};
use burn_flex::Flex;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mnist_kernels::{Kernels, conv_relu_pool, fully_connected, fully_connected_training_layout};

type Ad = Autodiff<Flex>;

// As the `mnist` binary: see its main.rs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fused_block(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("fused block (flex, batch 50)");
    group.sample_size(20).throughput(Throughput::Elements(50));
    // (name, channels in, side, channels out, input needs a gradient)
    for (name, ci, side, co, want_dx) in [("conv1", 1, 28, 32, false), ("conv2", 32, 14, 64, true)] {
        let x = Tensor::<Flex, 4>::random([50, ci, side, side], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 4>::random([co, ci, 5, 5], Distribution::Normal(0.0, 0.1), &device);
        let b = Tensor::<Flex, 1>::random([co], Distribution::Normal(0.0, 0.1), &device);
        let mix = Tensor::<Ad, 4>::random([50, co, side / 2, side / 2], Distribution::Normal(0.0, 1.0), &device);
        group.bench_function(format!("{name} forward"), |bench| {
            bench.iter(|| {
                let y = conv_relu_pool(Kernels::Fastest, x.clone(), w.clone(), b.clone());
                y.into_primitive()
            })
        });
        group.bench_function(format!("{name} forward + backward"), |bench| {
            bench.iter(|| {
                let xa = Tensor::<Ad, 4>::from_inner(x.clone());
                let xa = if want_dx { xa.require_grad() } else { xa };
                let wa = Tensor::<Ad, 4>::from_inner(w.clone()).require_grad();
                let ba = Tensor::<Ad, 1>::from_inner(b.clone()).require_grad();
                let y = conv_relu_pool(Kernels::Fastest, xa, wa.clone(), ba);
                let grads = (y * mix.clone()).sum().backward();
                wa.grad(&grads).map(|g| g.into_primitive())
            })
        });
    }
    group.finish();
}

fn fc1(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("fc1 (flex, batch 50)");
    group.sample_size(20).throughput(Throughput::Elements(50));
    let x = Tensor::<Flex, 2>::random([50, 3136], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Flex, 2>::random([3136, 1024], Distribution::Normal(0.0, 0.1), &device);
    let b = Tensor::<Flex, 1>::random([1024], Distribution::Normal(0.0, 0.1), &device);
    let dense = Tensor::<Ad, 2>::random([50, 1024], Distribution::Normal(0.0, 1.0), &device);
    // As in training: dropout and ReLU leave about a quarter of fc1's output gradient.
    let keep = Tensor::<Ad, 2>::random([50, 1024], Distribution::Uniform(0.0, 1.0), &device).lower_elem(0.25).float();
    let sparse = dense.clone() * keep;
    // The weight as training at 50 stores it (by columns, with AVX-512).
    let laid = fully_connected_training_layout(Kernels::Fastest, w.clone(), 50);
    for (own, mix, w, name) in [
        (true, dense.clone(), &w, "forward + backward"),
        (true, sparse.clone(), &w, "forward + backward, a quarter of the output gradient non-zero"),
        (true, sparse.clone(), &laid, "forward + backward, a quarter non-zero, the weight as training stores it"),
        (false, dense, &w, "forward + backward, Burn's matmuls"),
        (false, sparse, &w, "forward + backward, Burn's matmuls, a quarter non-zero"),
    ] {
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let xa = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
                let wa = Tensor::<Ad, 2>::from_inner(w.clone()).require_grad();
                let ba = Tensor::<Ad, 1>::from_inner(b.clone()).require_grad();
                let y = if own {
                    fully_connected(Kernels::Fastest, xa.clone(), wa.clone(), ba)
                } else {
                    xa.clone().matmul(wa.clone()) + ba.unsqueeze::<2>()
                };
                let grads = (y * mix.clone()).sum().backward();
                (xa.grad(&grads).map(|g| g.into_primitive()), wa.grad(&grads).map(|g| g.into_primitive()))
            })
        });
    }
    group.finish();
}

/// The pieces of one image's prediction: each convolution block forward and fc1 forward
/// (its input with the zeros ReLU and pooling leave, about half), batch 1.
fn one_image(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("one image (flex, batch 1)");
    group.sample_size(50);
    for (name, ci, side, co) in [("conv1", 1, 28, 32), ("conv2", 32, 14, 64)] {
        let x = Tensor::<Flex, 4>::random([1, ci, side, side], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 4>::random([co, ci, 5, 5], Distribution::Normal(0.0, 0.1), &device);
        let b = Tensor::<Flex, 1>::random([co], Distribution::Normal(0.0, 0.1), &device);
        group.bench_function(format!("{name} forward"), |bench| {
            bench.iter(|| conv_relu_pool(Kernels::Fastest, x.clone(), w.clone(), b.clone()).into_primitive())
        });
    }
    let x = burn::tensor::activation::relu(Tensor::<Flex, 2>::random([1, 3136], Distribution::Normal(0.0, 1.0), &device));
    let w = Tensor::<Flex, 2>::random([3136, 1024], Distribution::Normal(0.0, 0.1), &device);
    let b = Tensor::<Flex, 1>::random([1024], Distribution::Normal(0.0, 0.1), &device);
    group.bench_function("fc1 forward", |bench| {
        bench.iter(|| fully_connected(Kernels::Fastest, x.clone(), w.clone(), b.clone()).into_primitive())
    });
    group.finish();
}

criterion_group!(benches, fused_block, fc1, one_image);
criterion_main!(benches);
