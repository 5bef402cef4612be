//! The same network on burn-ndarray and burn-flex: same logits, same training step.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_flex::Flex;
use burn_ndarray::NdArray;
use mnist_data::{DatasetKind, Locator};
use mnist_model::{Cnn, CnnConfig, dropout_mask, weights};
use rand::SeedableRng;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn params<B: Backend>(model: &Cnn<B>) -> Vec<f32> {
    let mut out = Vec::new();
    out.extend(model.conv1.weight.val().into_data().to_vec::<f32>().unwrap());
    out.extend(model.conv2.weight.val().into_data().to_vec::<f32>().unwrap());
    out.extend(model.fc1.weight.val().into_data().to_vec::<f32>().unwrap());
    out.extend(model.fc2.weight.val().into_data().to_vec::<f32>().unwrap());
    out.extend(model.fc1.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap());
    out
}

/// One Adam step of the seed network on 16 real digits with a fixed dropout mask.
fn one_step<B: AutodiffBackend>(device: &B::Device) -> Vec<f32> {
    let data = Locator::offline(None).load(DatasetKind::Sample).unwrap();
    let config = CnnConfig::new();
    let model = config.init::<B>(5, device).unwrap();
    let batch = data.train.batch::<B>(&(0..16).collect::<Vec<_>>(), device).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mask = dropout_mask::<B>(16, config.hidden, config.dropout, &mut rng, device);
    let loss = CrossEntropyLossConfig::new().init(device).forward(model.forward_train(batch.images, mask), batch.labels);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<B, Cnn<B>>();
    params(&optim.step(1e-4, model, grads))
}

#[test]
fn one_training_step_gives_the_same_parameters() {
    let a = one_step::<Autodiff<Flex>>(&Default::default());
    let b = one_step::<Autodiff<NdArray>>(&Default::default());
    let d = max_diff(&a, &b);
    assert!(d <= 1e-4, "max parameter difference {d}");
}

#[test]
fn weights_saved_on_one_backend_predict_identically_on_another() {
    let data = Locator::offline(None).load(DatasetKind::Sample).unwrap();
    let config = CnnConfig::new();
    let dir = tempfile::tempdir().unwrap();
    let flex = config.init::<Flex>(21, &Default::default()).unwrap();
    weights::save_dir(&flex, &config, dir.path()).unwrap();
    let (_, nd) = weights::load_dir::<NdArray>(dir.path(), &Default::default()).unwrap();
    assert_eq!(flex.num_params(), nd.num_params());
    let pixels = &data.test.images()[..64 * 784];
    let a = flex.forward(mnist_data::images_to_tensor::<Flex>(pixels, &Default::default()));
    let b = nd.forward(mnist_data::images_to_tensor::<NdArray>(pixels, &Default::default()));
    let d = max_diff(&a.into_data().to_vec::<f32>().unwrap(), &b.into_data().to_vec::<f32>().unwrap());
    assert!(d <= 1e-4, "max logit difference {d}");
}
