//! The network: the seed's layers, initialisation and forward pass.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use mnist_kernels::{Kernels, KernelsInUse, conv_block, conv_block_implementation, linear, linear_implementation, softmax_cross_entropy};

use crate::error::{Error, Result};
use crate::input::SIDE;

/// Sizes and initialisation of [`Cnn`]. The defaults are the seed network exactly.
#[derive(Config, Debug, PartialEq)]
pub struct CnnConfig {
    /// Output channels of the first convolution.
    #[config(default = 32)]
    pub conv1_channels: usize,
    /// Output channels of the second convolution.
    #[config(default = 64)]
    pub conv2_channels: usize,
    /// Side of the square convolution kernels (SAME padding, so it must be odd).
    #[config(default = 5)]
    pub kernel_size: usize,
    /// Width of the hidden fully connected layer.
    #[config(default = 1024)]
    pub hidden: usize,
    /// Number of classes.
    #[config(default = 10)]
    pub classes: usize,
    /// Probability of dropping a hidden unit in training (the seed keeps 0.5).
    #[config(default = 0.5)]
    pub dropout: f64,
    /// Standard deviation of the truncated-normal weight initialisation (more than 0, at
    /// most [`CnnConfig::MAX_INIT`]).
    #[config(default = 0.1)]
    pub init_std: f64,
    /// Initial value of every bias (from -[`CnnConfig::MAX_INIT`] to
    /// [`CnnConfig::MAX_INIT`]).
    #[config(default = 0.1)]
    pub init_bias: f64,
}

impl Default for CnnConfig {
    fn default() -> Self {
        CnnConfig::new()
    }
}

/// The most parameters a network may have: 2^28 (1 GiB of f32, about 80 times the seed's;
/// training needs three times as much again for the gradient and Adam's moments). A
/// config past it is refused before anything is allocated.
pub const MAX_PARAMS: usize = 1 << 28;

impl CnnConfig {
    /// The largest `init_std`, and the largest `init_bias` either side of 0: 10, a hundred
    /// times the seed's 0.1. Beyond it the first forward pass's activations grow by about
    /// that factor per layer, and soon overflow f32 (an `init_std` of 1e30 gave a loss of
    /// NaN before any update).
    pub const MAX_INIT: f64 = 10.0;

    /// Checks every value is in range, and that the network has at most [`MAX_PARAMS`]
    /// parameters.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: Option<&str>, message: String| Err(Error::InvalidConfig { field: field.map(str::to_string), message });
        for (name, v) in [
            ("conv1_channels", self.conv1_channels),
            ("conv2_channels", self.conv2_channels),
            ("hidden", self.hidden),
        ] {
            if v == 0 {
                return bad(Some(name), format!("{name} must be at least 1, got 0"));
            }
        }
        if self.classes < 2 {
            return bad(Some("classes"), format!("classes must be at least 2, got {}", self.classes));
        }
        if self.kernel_size.is_multiple_of(2) || self.kernel_size > SIDE {
            return bad(Some("kernel_size"), format!("kernel_size must be an odd number from 1 to {SIDE}, got {}", self.kernel_size));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(Some("dropout"), format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        let max = Self::MAX_INIT;
        if !(self.init_std > 0.0 && self.init_std <= max) {
            return bad(Some("init_std"), format!("init_std must be more than 0 and at most {max} (the seed's is 0.1), got {}", number(self.init_std)));
        }
        if !(-max..=max).contains(&self.init_bias) {
            return bad(Some("init_bias"), format!("init_bias must be from -{max} to {max} (the seed's is 0.1), got {}", number(self.init_bias)));
        }
        // Checked products: widths near usize::MAX would overflow the count.
        let params = self.param_shapes().iter().try_fold(0usize, |sum, (_, shape)| {
            shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| sum.checked_add(n))
        });
        if params.is_none_or(|n| n > MAX_PARAMS) {
            let count = params.map_or_else(|| "more than 2^64".to_string(), thousands);
            return bad(None, format!(
                "the network would have {count} parameters; the most is {} (1 GiB of f32; the seed has 3,274,634): lower hidden, conv1_channels or conv2_channels",
                thousands(MAX_PARAMS)
            ));
        }
        Ok(())
    }

    /// Inputs of the first fully connected layer: `conv2_channels * 7 * 7` (3136 in the seed).
    pub fn flat_features(&self) -> usize {
        self.conv2_channels.saturating_mul((SIDE / 4) * (SIDE / 4))
    }

    /// Every parameter tensor, by path, with its shape (Burn layout: convolution weights
    /// `[out, in, k, k]`, linear weights `[in, out]`).
    pub fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let k = self.kernel_size;
        vec![
            ("conv1.weight", vec![self.conv1_channels, 1, k, k]),
            ("conv1.bias", vec![self.conv1_channels]),
            ("conv2.weight", vec![self.conv2_channels, self.conv1_channels, k, k]),
            ("conv2.bias", vec![self.conv2_channels]),
            ("fc1.weight", vec![self.flat_features(), self.hidden]),
            ("fc1.bias", vec![self.hidden]),
            ("fc2.weight", vec![self.hidden, self.classes]),
            ("fc2.bias", vec![self.classes]),
        ]
    }

    /// Number of trainable parameters (3,274,634 for the seed).
    pub fn num_params(&self) -> usize {
        self.param_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Builds the network with the seed's initialisation, drawn on the host from `seed`:
    /// weights from a normal distribution with standard deviation `init_std`, re-drawn
    /// beyond two standard deviations (TensorFlow's `truncated_normal`), and every bias
    /// `init_bias`. The same seed gives the same weights on every backend.
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Cnn<B>> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = self.kernel_size;
        let conv = |cin: usize, cout: usize, rng: &mut ChaCha8Rng| {
            let mut conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_padding(PaddingConfig2d::Same)
                .with_bias(true)
                .init::<B>(device);
            conv.weight = Param::from_data(truncated_normal(rng, [cout, cin, k, k], self.init_std), device);
            conv.bias = Some(Param::from_data(constant([cout], self.init_bias), device));
            conv
        };
        let linear = |din: usize, dout: usize, rng: &mut ChaCha8Rng| {
            let mut linear = LinearConfig::new(din, dout).with_bias(true).init::<B>(device);
            linear.weight = Param::from_data(truncated_normal(rng, [din, dout], self.init_std), device);
            linear.bias = Some(Param::from_data(constant([dout], self.init_bias), device));
            linear
        };
        Ok(Cnn {
            conv1: conv(1, self.conv1_channels, &mut rng),
            conv2: conv(self.conv1_channels, self.conv2_channels, &mut rng),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: linear(self.flat_features(), self.hidden, &mut rng),
            fc2: linear(self.hidden, self.classes, &mut rng),
            kernels: Kernels::default(),
        })
    }
}

/// `v` as a message shows it: `1e30` rather than thirty-one digits.
fn number(v: f64) -> String {
    if v.abs() >= 1e9 { format!("{v:e}") } else { v.to_string() }
}

fn truncated_normal<const D: usize>(rng: &mut impl Rng, shape: [usize; D], std: f64) -> TensorData {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| loop {
            let x: f64 = StandardNormal.sample(rng);
            if x.abs() <= 2.0 {
                break (x * std) as f32;
            }
        })
        .collect();
    TensorData::new(values, shape)
}

fn constant<const D: usize>(shape: [usize; D], value: f64) -> TensorData {
    TensorData::new(vec![value as f32; shape.iter().product()], shape)
}

/// The "Deep MNIST for Experts" network.
///
/// `28x28x1 -> conv 5x5x32 SAME + ReLU -> maxpool 2x2 -> conv 5x5x64 SAME + ReLU ->
/// maxpool 2x2 -> fc 3136->1024 + ReLU -> dropout -> fc 1024->10` (logits).
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    /// First convolution, `[32, 1, 5, 5]`.
    pub conv1: Conv2d<B>,
    /// Second convolution, `[64, 32, 5, 5]`.
    pub conv2: Conv2d<B>,
    /// 2x2 max pooling with stride 2, used after each convolution.
    pub pool: MaxPool2d,
    /// Hidden fully connected layer, `[3136, 1024]`.
    pub fc1: Linear<B>,
    /// Output layer, `[1024, 10]`.
    pub fc2: Linear<B>,
    /// Which implementations compute the convolution blocks and fully connected layers
    /// (not saved with the weights; see [`Cnn::kernels_in_use`]).
    #[module(skip)]
    pub kernels: Kernels,
}

impl<B: Backend> Cnn<B> {
    /// Inference: logits `[batch, 10]` from images `[batch, 1, 28, 28]` in `[0, 1]`.
    /// No dropout.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        linear(self.kernels, &self.fc2, self.hidden(images))
    }

    /// Training: like [`forward`](Self::forward), with the hidden activations
    /// `[batch, 1024]` multiplied by `keep_mask` (`[batch, 1024]`, each entry 0 or
    /// `1 / keep`; see [`dropout_mask`]).
    pub fn forward_train(&self, images: Tensor<B, 4>, keep_mask: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(self.kernels, &self.fc2, self.hidden(images) * keep_mask)
    }

    /// Hidden activations `[batch, 1024]` after fc1 and ReLU.
    pub fn hidden(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        // [b, 1, 28, 28] -> [b, 32, 28, 28] -> [b, 32, 14, 14]
        let x = conv_block(self.kernels, &self.conv1, &self.pool, images);
        // [b, 32, 14, 14] -> [b, 64, 14, 14] -> [b, 64, 7, 7]
        let x = conv_block(self.kernels, &self.conv2, &self.pool, x);
        // [b, 64, 7, 7] -> [b, 3136] (channel-major, as PyTorch flattens NCHW)
        let x = x.flatten::<2>(1, 3);
        // [b, 3136] -> [b, 1024]
        relu(linear(self.kernels, &self.fc1, x))
    }

    /// The seed's loss, softmax cross-entropy: the mean over the batch of
    /// `-log softmax(logits)[label]`, `logits [batch, classes]`, `labels [batch]` -> `[1]`,
    /// with the model's [`Kernels`] choice ([`mnist_kernels::softmax_cross_entropy`]: one
    /// fused kernel for the loss and its gradient on burn-wgpu and burn-cuda, Burn's
    /// `CrossEntropyLoss` elsewhere).
    ///
    /// # Panics
    /// As Burn's `CrossEntropyLoss` does, when there is not one label a row.
    pub fn loss(&self, logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        softmax_cross_entropy(self.kernels, logits, labels)
    }

    /// Number of classes the network scores (the width of its logits; 10 in the seed).
    pub fn classes(&self) -> usize {
        self.fc2.weight.dims()[1]
    }

    /// Which implementation computes the convolution blocks and the fully connected
    /// layers on `B` with the model's [`Kernels`] choice: for example "convolution blocks:
    /// fused flex kernels; fully connected: own flex kernels" on `Autodiff<Flex>`, "Burn's
    /// operations" on a backend mnist-kernels has no kernels for.
    pub fn kernels_in_use(&self) -> KernelsInUse {
        KernelsInUse::new(
            &[
                conv_block_implementation(self.kernels, &self.conv1, &self.pool),
                conv_block_implementation(self.kernels, &self.conv2, &self.pool),
            ],
            &[linear_implementation(self.kernels, &self.fc1), linear_implementation(self.kernels, &self.fc2)],
        )
    }

    /// Returns the model computing its convolution blocks with `kernels`.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Returns the model with its fully connected weights stored as its kernels train
    /// fastest with them at `batch` images a step
    /// ([`mnist_kernels::fully_connected_training_layout`]: on burn-flex with AVX-512, at
    /// up to 64 images, fc1's weight column by column). The same values, parameter ids and
    /// tracking, and the same saved files; a copy of each weight it changes, so call it
    /// once, after [`Self::with_kernels`] and after loading a record.
    pub fn with_training_layout(mut self, batch: usize) -> Self {
        let kernels = self.kernels;
        self.fc1.weight = self.fc1.weight.map(|w| mnist_kernels::fully_connected_training_layout(kernels, w, batch));
        self.fc2.weight = self.fc2.weight.map(|w| mnist_kernels::fully_connected_training_layout(kernels, w, batch));
        self
    }

    /// Class probabilities `[batch, 10]` (softmax of the logits).
    pub fn probabilities(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        burn::tensor::activation::softmax(self.forward(images), 1)
    }
}

/// The inverted-dropout mask of training step `step` of a run seeded `seed`:
/// `[batch, width]`, each entry `0` with probability `drop`, else `1 / (1 - drop)`. A
/// pure function of seed, step and position ([`mnist_kernels::dropout_mask`]'s hash), so
/// training is reproducible across a resume and every backend draws the same masks; the
/// GPU backends compute it on the device (no copy from the host each step).
///
/// # Panics
/// When `batch * width` is over `u32::MAX`.
pub fn dropout_mask<B: Backend>(batch: usize, width: usize, drop: f64, seed: u64, step: u64, device: &B::Device) -> Tensor<B, 2> {
    mnist_kernels::dropout_mask::<B>(batch, width, 1.0 - drop, seed, step, device)
}

/// `n` with commas between its groups of three digits (`3,274,634`).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
