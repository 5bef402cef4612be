//! The same network on burn-ndarray and burn-flex (whose convolution blocks are
//! mnist-kernels' fused kernels, while ndarray runs Burn's own operations): same logits,
//! same training step.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use mnist_data::{DatasetKind, Locator};
use mnist_model::artifact::{self, Manifest};
use mnist_model::{Cnn, CnnConfig, dropout_mask, input};
use mnist_train::TrainConfig;

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Every parameter of the network, flattened in a fixed order.
fn params<B: Backend>(model: &Cnn<B>) -> Vec<f32> {
    let mut out = Vec::new();
    let mut add = |data: burn::tensor::TensorData| out.extend(data.to_vec::<f32>().unwrap());
    add(model.conv1.weight.val().into_data());
    add(model.conv1.bias.as_ref().unwrap().val().into_data());
    add(model.conv2.weight.val().into_data());
    add(model.conv2.bias.as_ref().unwrap().val().into_data());
    add(model.fc1.weight.val().into_data());
    add(model.fc1.bias.as_ref().unwrap().val().into_data());
    add(model.fc2.weight.val().into_data());
    add(model.fc2.bias.as_ref().unwrap().val().into_data());
    out
}

/// The gradient of every parameter (same order as [`params`]).
fn grads<B: AutodiffBackend>(model: &Cnn<B>, grads: &B::Gradients) -> Vec<f32> {
    let mut out = Vec::new();
    let mut add = |t: Option<burn::tensor::Tensor<B::InnerBackend, 1>>| {
        out.extend(t.expect("every parameter has a gradient").into_data().to_vec::<f32>().unwrap())
    };
    add(model.conv1.weight.val().grad(grads).map(|t| t.flatten(0, 3)));
    add(model.conv1.bias.as_ref().unwrap().val().grad(grads));
    add(model.conv2.weight.val().grad(grads).map(|t| t.flatten(0, 3)));
    add(model.conv2.bias.as_ref().unwrap().val().grad(grads));
    add(model.fc1.weight.val().grad(grads).map(|t| t.flatten(0, 1)));
    add(model.fc1.bias.as_ref().unwrap().val().grad(grads));
    add(model.fc2.weight.val().grad(grads).map(|t| t.flatten(0, 1)));
    add(model.fc2.bias.as_ref().unwrap().val().grad(grads));
    out
}

/// One training step's gradients and the parameters after it.
pub struct Step {
    grads: Vec<f32>,
    params: Vec<f32>,
}

/// One Adam step of the seed network on 16 real digits with a fixed dropout mask, with
/// the optimizer training uses (the fused Adam kernels where the backend has them).
pub fn one_step<B: AutodiffBackend>(device: &B::Device) -> Step {
    let data = Locator::offline(None).load(DatasetKind::Sample).unwrap();
    let config = CnnConfig::new();
    let model = config.init::<B>(5, device).unwrap();
    let batch = data.train.gather(&(0..16).collect::<Vec<_>>()).unwrap();
    let mask = dropout_mask::<B>(16, config.hidden, config.dropout, 9, 0, device);
    let loss = CrossEntropyLossConfig::new().init(device).forward(model.forward_train(input::images::<B>(&batch.pixels, device), mask), input::labels::<B>(&batch.labels, device));
    let raw = loss.backward();
    let grads_flat = grads(&model, &raw);
    let grads = GradientsParams::from_grads(raw, &model);
    let mut optim = mnist_train::optimizer::<B>(&TrainConfig::new());
    Step { grads: grads_flat, params: params(&optim.step(1e-4, model, grads)) }
}

/// The same step within 1e-4: every gradient, and every parameter after the update.
///
/// Adam's first update is `lr * g / (|g| + eps)`, about `lr * sign(g)`: for a gradient
/// within float noise of zero its sign, and so a 2e-4 jump, is arbitrary on any backend.
/// Parameters whose gradient is below 1e-6 on both sides are therefore held to 2e-4 (the
/// most Adam can move them), and at most one in ten thousand may differ by more than 1e-4.
pub fn assert_same_step(a: &Step, b: &Step) {
    let d = max_diff(&a.grads, &b.grads);
    assert!(d <= 1e-4, "max gradient difference {d}");
    let mut flipped = 0;
    for (i, (x, y)) in a.params.iter().zip(&b.params).enumerate() {
        let tiny = a.grads[i].abs() < 1e-6 && b.grads[i].abs() < 1e-6;
        flipped += usize::from(tiny && (x - y).abs() > 1e-4);
        let limit = if tiny { 2.0001e-4 } else { 1e-4 };
        assert!(
            (x - y).abs() <= limit,
            "parameter {i}: {x} vs {y} (gradients {} vs {})",
            a.grads[i],
            b.grads[i]
        );
    }
    assert!(flipped * 10_000 <= a.params.len(), "{flipped} parameters moved apart by a near-zero gradient");
}

#[test]
fn one_training_step_gives_the_same_parameters() {
    let a = one_step::<Autodiff<Flex>>(&Default::default());
    let b = one_step::<Autodiff<NdArray>>(&Default::default());
    assert_same_step(&a, &b);
}

#[test]
fn weights_saved_on_one_backend_predict_identically_on_another() {
    let data = Locator::offline(None).load(DatasetKind::Sample).unwrap();
    let config = CnnConfig::new();
    let dir = tempfile::tempdir().unwrap();
    let flex = config.init::<Flex>(21, &Default::default()).unwrap();
    artifact::save_dir(&flex, &Manifest::from_config(config.clone()), dir.path()).unwrap();
    let (_, nd) = artifact::load_dir::<NdArray>(dir.path(), &Default::default()).unwrap();
    assert_eq!(flex.num_params(), nd.num_params());
    let pixels = &data.test.images()[..64 * 784];
    let a = flex.forward(mnist_model::input::images::<Flex>(pixels, &Default::default()));
    let b = nd.forward(mnist_model::input::images::<NdArray>(pixels, &Default::default()));
    let d = max_diff(&a.into_data().to_vec::<f32>().unwrap(), &b.into_data().to_vec::<f32>().unwrap());
    assert!(d <= 1e-4, "max logit difference {d}");
}
