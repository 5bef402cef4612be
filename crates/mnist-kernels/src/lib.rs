//! Fast kernels for the three operations that make up nearly all of a training step of
//! a small convolutional network, as ops on Burn tensors, generic over the backend:
//!
//! | op | shapes | what it computes |
//! | --- | --- | --- |
//! | [`conv_relu_pool`] | `x [b, c, h, w]`, `weight [o, c, k, k]` (k odd), `bias [o]` -> `[b, o, h/2, w/2]` | `maxpool2x2(relu(conv_same(x, weight) + bias))` |
//! | [`fully_connected`] | `x [n, i]`, `weight [i, j]`, `bias [j]` -> `[n, j]` | `x weight + bias` |
//! | [`FusedAdam`], [`FusedAdamOptimizer`] | any parameter and its gradient; a module's | Burn's Adam, one pass per parameter; a module's in one launch on GPUs |
//! | [`dropout_mask`] | `[batch, width]` | a dropout mask, a pure function of seed, step and element |
//! | [`softmax_cross_entropy`] | `logits [n, classes]`, `labels [n]` -> `[1]` | the mean of `-log softmax(logits)[label]` |
//!
//! ([`conv_block`] and [`linear`] are the first two taking Burn's `Conv2d`, `MaxPool2d`
//! and `Linear` modules.) Each op runs the fastest implementation there is for the
//! backend it is called on, chosen by [`Kernels`], and the choice is observable, never
//! silent: [`conv_block_implementation`], [`linear_implementation`] and
//! [`FusedAdam::implementation`] say which one runs, as [`Implementation`]s that
//! [`KernelsInUse`] gathers for a report.
//!
//! The implementations, by backend (this crate's source is organised the same way):
//! - **burn-flex** (cargo feature `flex`, on by default; `src/flex/`): the convolution
//!   block as one operation with its own backward pass (a direct convolution in register
//!   tiles over zero-padded channels-last images, Winograd's F(4x4, 5x5) for 5x5 kernels
//!   over multiples of 8 channels, bias, ReLU and pooling applied to the tiles, and a
//!   sparse backward through the pooling winners); the fully connected layer's three
//!   matrix products with kernels shaped for a large weight (for a small batch, the
//!   weight streamed past blocks of images; above 64 images, a blocked product over the
//!   packed weight), the backward pass over the output gradient's non-zero entries only when at most 0.4 of
//!   it is non-zero (in training dropout and ReLU leave about a quarter of fc1's); Adam's
//!   update in place in one vectorised pass. Recognised by `TypeId` (`Flex` and
//!   `Autodiff<Flex>` with Burn's default checkpointing), so the ops keep a plain
//!   `B: Backend` bound and no `unsafe` is involved.
//!   The hot loops are compiled for the best instruction set the CPU has ([`simd`]:
//!   AVX-512 with 16-lane register tiles, AVX2 + FMA, NEON on aarch64, or portable
//!   arithmetic; `MNIST_RS_SIMD` caps it).
//! - **burn-wgpu and burn-cuda** (cargo features `wgpu` and `cuda`; `src/cube/`): the
//!   convolution block as CubeCL kernels, one source for both runtimes: the forward pass
//!   fused (each thread one pooling window's four sums, bias, ReLU, maximum and winner), a
//!   backward pass sparse through the winners with the weight gradient split over batch x
//!   pixels (split-K) so that it fills a GPU, and the input gradient only where the input
//!   is tracked; Adam's update in place, all of a module's parameters in one launch; the dropout mask
//!   computed on the device; softmax cross-entropy and its gradient in one launch; on `Fusion` backends as custom operations in the fusion
//!   stream. Recognised
//!   by `TypeId` as `Wgpu`, `Cuda` and their `Autodiff` (default checkpointing).
//! - **any backend**: [`Kernels::Im2col`] computes the block as im2col and one matrix
//!   product made of Burn tensor operations (for GPUs whose matrix product is tuned further
//!   than their convolution); otherwise Burn's own `conv2d`, `relu`, `max_pool2d`,
//!   `matmul` and `Adam`.
//!
//! All give the same results up to float rounding: the unit tests hold every kernel to
//! Burn's operation within 1e-4, forward and every gradient, on odd shapes and the seed's.
//!
//! ```
//! use burn::tensor::{Distribution, Tensor};
//! use burn_flex::Flex;
//! use mnist_kernels::{Implementation, Kernels, conv_relu_pool, conv_relu_pool_implementation};
//!
//! let device = Default::default();
//! let x = Tensor::<Flex, 4>::random([2, 1, 28, 28], Distribution::Default, &device);
//! let weight = Tensor::<Flex, 4>::random([32, 1, 5, 5], Distribution::Default, &device);
//! let bias = Tensor::<Flex, 1>::zeros([32], &device);
//! let y = conv_relu_pool(Kernels::Fastest, x, weight.clone(), bias.clone());
//! assert_eq!(y.dims(), [2, 32, 14, 14]);
//! # #[cfg(feature = "flex")]
//! assert_eq!(conv_relu_pool_implementation::<Flex>(Kernels::Fastest, &weight, &bias), Implementation::FusedFlex);
//! ```

mod adam;
#[cfg(feature = "cube")]
mod cube;
mod dropout;
#[cfg(feature = "flex")]
mod flex;
mod im2col;

use std::fmt;

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Int, Tensor};
use serde::{Deserialize, Serialize};

pub use adam::{FusedAdam, FusedAdamConfig, FusedAdamOptimizer};
pub use dropout::dropout_mask;

/// Which implementations the ops may choose from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fastest available: on burn-flex (with the `flex` feature) the fused CPU kernels
    /// and the fully connected layers' own kernels; on burn-wgpu and burn-cuda (with the
    /// `wgpu` or `cuda` feature) the CubeCL kernels of the blocks and the fused softmax
    /// cross-entropy; Burn's own operations on any other backend. [`FusedAdam`] is fused on
    /// burn-flex and the CubeCL backends whatever this choice.
    #[default]
    Fastest,
    /// Burn's `conv2d`, `relu`, `max_pool2d` and `matmul` on every backend: the reference.
    Burn,
    /// Convolution as im2col (k*k shifted slices of the padded NHWC input, concatenated)
    /// and one matrix product, pooling as a reshape and two maxima, all as Burn tensor
    /// operations on any backend (other blocks than a SAME, stride-1, odd square
    /// convolution and a 2x2 pool use Burn's operations). Slow on CPUs, where the copies
    /// dominate; on one H200 with wgpu it trained 17% faster than Burn's convolution at
    /// batch 50 and 12% slower at batch 512.
    Im2col,
}

impl Kernels {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fastest => "fastest",
            Kernels::Burn => "burn",
            Kernels::Im2col => "im2col",
        }
    }
}

/// The implementation an op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Implementation {
    /// The convolution block as one fused burn-flex operation, forward and backward.
    FusedFlex,
    /// The convolution block as this crate's CubeCL kernels (burn-wgpu, burn-cuda),
    /// forward and backward.
    FusedCube,
    /// This crate's burn-flex kernels for the matrix products (forward, input gradient,
    /// weight gradient).
    OwnFlex,
    /// im2col and one matrix product, as Burn tensor operations ([`Kernels::Im2col`]).
    Im2col,
    /// Burn's own operations.
    Burn,
    /// Adam's update in one pass, in place, on burn-flex.
    FusedAdam,
    /// Burn's `Adam` (tensor operations).
    BurnAdam,
}

/// The largest batch the burn-flex fully connected kernels treat as small: up to it the
/// forward pass keeps a block of images' sums in cache while the weight streams past, and
/// the dense input gradient is this crate's; above it the forward pass is a blocked
/// matrix product over a packed weight, and the dense input gradient burn-flex's.
pub const SMALL_BATCH: usize = 64;

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Implementation::FusedFlex => "fused flex kernels",
            Implementation::FusedCube => "fused CubeCL kernels",
            Implementation::OwnFlex => "own flex kernels",
            Implementation::Im2col => "im2col + matmul (Burn tensor operations)",
            Implementation::Burn => "Burn's operations",
            Implementation::FusedAdam => "fused Adam",
            Implementation::BurnAdam => "Burn's Adam",
        })
    }
}

/// The instruction set the burn-flex kernels are compiled for at run time, from the
/// least to the most capable; [`simd`] says which one runs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Simd {
    /// Plain arithmetic, vectorised by the compiler as it can (any CPU).
    Portable,
    /// aarch64 NEON (Apple Silicon, Graviton, ...): each eight lanes two 128-bit
    /// registers, with fused multiply-adds, out of 32.
    Neon,
    /// x86-64 AVX2 + FMA: eight-lane fused multiply-adds in 16 YMM registers.
    Avx2,
    /// x86-64 AVX-512 (F, VL, BW, DQ, CD: pulp's x86-v4): the deep products (Winograd,
    /// fully connected) in register tiles of 4 rows x 64 lanes (or 10 x 16, 8 x 16) in ZMM
    /// registers and the sparse backward's tiles 16 lanes at a time; the rest as AVX2 with
    /// EVEX encodings and 32 registers.
    Avx512,
}

impl Simd {
    /// The environment variable that caps the instruction set: `avx512`, `avx2`, `neon`
    /// or `portable` (unset or `auto`: the best the CPU has); to compare them on one
    /// machine. Only the levels of the CPU's architecture are accepted.
    pub const ENV: &'static str = "MNIST_RS_SIMD";

    /// Every level, in order.
    pub const ALL: [Simd; 4] = [Simd::Portable, Simd::Neon, Simd::Avx2, Simd::Avx512];

    /// Lower-case name, as `MNIST_RS_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Neon => "neon",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }

    /// The architecture the level belongs to (`None`: any).
    pub fn arch(self) -> Option<&'static str> {
        match self {
            Simd::Portable => None,
            Simd::Neon => Some("aarch64"),
            Simd::Avx2 | Simd::Avx512 => Some("x86_64"),
        }
    }

    /// The cap `MNIST_RS_SIMD` sets, if it is set (`auto` or empty: none).
    ///
    /// # Errors
    /// A message naming the variable, its value and the values it takes on this CPU's
    /// architecture, when it is set to anything else (a level of another architecture
    /// among them).
    pub fn cap_from_env() -> Result<Option<Simd>, String> {
        match std::env::var_os(Self::ENV) {
            Some(value) => Self::parse_cap(&value.to_string_lossy(), std::env::consts::ARCH),
            None => Ok(None),
        }
    }

    /// The cap a value of `MNIST_RS_SIMD` sets on architecture `arch` (case and
    /// surrounding blanks ignored).
    fn parse_cap(value: &str, arch: &str) -> Result<Option<Simd>, String> {
        let here: Vec<Simd> = Self::ALL.into_iter().filter(|s| s.arch().is_none_or(|a| a == arch)).collect();
        let wanted = value.trim().to_ascii_lowercase();
        if wanted.is_empty() || wanted == "auto" {
            return Ok(None);
        }
        if let Some(level) = here.iter().find(|s| s.name() == wanted) {
            return Ok(Some(*level));
        }
        let mut names: Vec<&str> = here.iter().rev().map(|s| s.name()).collect();
        names.push("auto");
        let expected = format!("{} or {}", names[..names.len() - 1].join(", "), names[names.len() - 1]);
        match Self::ALL.into_iter().find(|s| s.name() == wanted) {
            Some(other) => Err(format!(
                "{}={value:?}: {wanted} is for {} CPUs and this one is {arch}; expected {expected}",
                Self::ENV,
                other.arch().unwrap_or("any")
            )),
            None => Err(format!("{}={value:?}: expected {expected}", Self::ENV)),
        }
    }
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The instruction set the burn-flex kernels run with on this machine: the best one the
/// CPU has, at most what `MNIST_RS_SIMD` allows ([`Simd::ENV`]); [`Simd::Portable`] in a
/// build without the `flex` feature.
pub fn simd() -> Simd {
    #[cfg(feature = "flex")]
    return flex::lanes::chosen();
    #[cfg(not(feature = "flex"))]
    Simd::Portable
}

/// Which implementation each part of a network runs, for people and reports:
/// `convolution blocks: fused flex kernels; fully connected: own flex kernels;
/// optimizer: fused Adam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelsInUse {
    /// The convolution blocks (conv + bias + ReLU + max-pool).
    pub conv_blocks: String,
    /// The fully connected layers.
    pub fully_connected: String,
    /// The optimizer's update, when training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
}

impl KernelsInUse {
    /// The record of a network whose layers run `conv_blocks` and `fully_connected` (each
    /// a list of the implementations its layers run, in order; equal ones are named once).
    pub fn new(conv_blocks: &[Implementation], fully_connected: &[Implementation]) -> Self {
        KernelsInUse { conv_blocks: describe(conv_blocks), fully_connected: describe(fully_connected), optimizer: None }
    }

    /// The same with the optimizer's implementation.
    pub fn with_optimizer(mut self, optimizer: Implementation) -> Self {
        self.optimizer = Some(optimizer.to_string());
        self
    }

    /// Every entry as `(key, implementation)`: `conv_blocks`, `fully_connected` and, when
    /// known, `optimizer`.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("conv_blocks", self.conv_blocks.clone()), ("fully_connected", self.fully_connected.clone())];
        if let Some(optimizer) = &self.optimizer {
            out.push(("optimizer", optimizer.clone()));
        }
        out
    }
}

/// `a` when all are `a`, else `first: a, second: b, ...`.
fn describe(parts: &[Implementation]) -> String {
    match parts {
        [] => "none".into(),
        [first, rest @ ..] if rest.iter().all(|p| p == first) => first.to_string(),
        _ => {
            const ORDINALS: [&str; 4] = ["first", "second", "third", "fourth"];
            let named = parts.iter().enumerate().map(|(i, p)| match ORDINALS.get(i) {
                Some(ordinal) => format!("{ordinal}: {p}"),
                None => format!("#{}: {p}", i + 1),
            });
            named.collect::<Vec<_>>().join(", ")
        }
    }
}

impl fmt::Display for KernelsInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "convolution blocks: {}; fully connected: {}", self.conv_blocks, self.fully_connected)?;
        if let Some(optimizer) = &self.optimizer {
            write!(f, "; optimizer: {optimizer}")?;
        }
        Ok(())
    }
}

/// Shapes of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) struct Geometry {
    /// Batch.
    pub b: usize,
    /// Input channels.
    pub c: usize,
    /// Input (and convolution output) height.
    pub h: usize,
    /// Input (and convolution output) width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel side (odd).
    pub k: usize,
}

impl Geometry {
    /// The geometry of a block the fused kernels take: f32 tensors, `x [b, c, h, w]` with
    /// `h, w >= 2`, `weight [o, c, k, k]` with `k` odd, `bias [o]`; `None` for anything else
    /// (Burn's operations then say what is wrong, if anything).
    #[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
    pub(crate) fn of<B: Backend>(x: &Tensor<B, 4>, weight: &Tensor<B, 4>, bias: &Tensor<B, 1>) -> Option<Geometry> {
        let [b, c, h, w] = x.dims();
        let [o, wc, k, k2] = weight.dims();
        let supported = wc == c
            && k == k2
            && k % 2 == 1
            && h >= 2
            && w >= 2
            && bias.dims() == [o]
            && [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3];
        supported.then_some(Geometry { b, c, h, w, o, k })
    }

    /// The pooled output's height and width, `(h / 2, w / 2)`.
    #[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
    pub(crate) fn pooled(&self) -> (usize, usize) {
        (self.h / 2, self.w / 2)
    }
    /// The block's output shape, `[b, o, h / 2, w / 2]`.
    #[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
    pub(crate) fn out_shape(&self) -> [usize; 4] {
        let (ph, pw) = self.pooled();
        [self.b, self.o, ph, pw]
    }
}


/// The arguments of an op handed back when it does not run: the input `[.., D dims]`, the
/// weight and the bias.
#[cfg(any(feature = "flex", feature = "cube"))]
pub(crate) type Refused<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, 1>);

/// Moves `value` to type `U` when it is one (`T` and `U` the same type), or hands it back:
/// how a generic op reaches a kernel written for one concrete backend, without `unsafe`.
#[cfg(any(feature = "flex", feature = "cube"))]
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let boxed: Box<dyn std::any::Any> = Box::new(value);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(boxed) => Err(*boxed.downcast::<T>().unwrap_or_else(|_| unreachable!("boxed a T"))),
    }
}

/// The float primitive of a tensor already checked to be f32 (so not quantized).
pub(crate) fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> burn::tensor::ops::FloatTensor<B> {
    match t.into_primitive() {
        burn::tensor::TensorPrimitive::Float(p) => p,
        burn::tensor::TensorPrimitive::QFloat(_) => unreachable!("checked f32"),
    }
}

/// Whether `B` is a backend this crate has its own kernels for, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(all(feature = "flex", feature = "cube")), allow(dead_code))]
enum Native {
    /// burn-flex without autodiff (inference).
    Flex,
    /// `Autodiff<Flex>` with Burn's default checkpointing (training).
    AutodiffFlex,
    /// burn-wgpu's or burn-cuda's default backend (`Fusion<CubeBackend<..>>`), with or
    /// without autodiff (Burn's default checkpointing).
    Cube,
    /// Any other backend.
    Other,
}

/// The one place backends are recognised.
#[cfg_attr(not(any(feature = "flex", feature = "wgpu", feature = "cuda")), allow(clippy::extra_unused_type_parameters))]
fn native<B: Backend>() -> Native {
    #[cfg(feature = "flex")]
    {
        use std::any::TypeId;
        if TypeId::of::<B>() == TypeId::of::<burn_flex::Flex>() {
            return Native::Flex;
        }
        if TypeId::of::<B>() == TypeId::of::<burn_autodiff::Autodiff<burn_flex::Flex>>() {
            return Native::AutodiffFlex;
        }
    }
    #[cfg(feature = "wgpu")]
    {
        use std::any::TypeId;
        if TypeId::of::<B>() == TypeId::of::<burn_wgpu::Wgpu>() || TypeId::of::<B>() == TypeId::of::<burn_autodiff::Autodiff<burn_wgpu::Wgpu>>() {
            return Native::Cube;
        }
    }
    #[cfg(feature = "cuda")]
    {
        use std::any::TypeId;
        if TypeId::of::<B>() == TypeId::of::<burn_cuda::Cuda>() || TypeId::of::<B>() == TypeId::of::<burn_autodiff::Autodiff<burn_cuda::Cuda>>() {
            return Native::Cube;
        }
    }
    Native::Other
}

/// The implementation [`conv_relu_pool`] runs for these arguments on `B`.
pub fn conv_relu_pool_implementation<B: Backend>(kernels: Kernels, weight: &Tensor<B, 4>, bias: &Tensor<B, 1>) -> Implementation {
    let [o, _, k, k2] = weight.dims();
    let odd_square = k == k2 && k % 2 == 1 && bias.dims() == [o];
    let f32 = weight.dtype() == DType::F32 && bias.dtype() == DType::F32;
    match kernels {
        Kernels::Fastest if odd_square && f32 => match native::<B>() {
            Native::Flex | Native::AutodiffFlex => Implementation::FusedFlex,
            Native::Cube => Implementation::FusedCube,
            Native::Other => Implementation::Burn,
        },
        Kernels::Im2col if odd_square => Implementation::Im2col,
        _ => Implementation::Burn,
    }
}

/// `maxpool2x2(relu(conv_same(x, weight) + bias))`: a SAME convolution with stride 1,
/// the bias, ReLU and a 2x2 max-pool with stride 2 (which drops an odd last row or
/// column). `x: [b, c, h, w]`, `weight: [o, c, k, k]` (k odd), `bias: [o]` ->
/// `[b, o, h / 2, w / 2]`. The implementation is [`conv_relu_pool_implementation`]'s.
///
/// # Panics
/// As Burn's `conv2d` does, when the shapes do not fit together.
pub fn conv_relu_pool<B: Backend>(kernels: Kernels, x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 4> {
    // The tensors are moved into the kernel, never cloned: a second reference to an
    // autodiff tensor while the op registers keeps burn-autodiff's graph from freeing
    // what it no longer needs (5% of a training step and 15 MB, measured).
    let (x, weight, bias) = match conv_relu_pool_implementation(kernels, &weight, &bias) {
        #[cfg(feature = "flex")]
        Implementation::FusedFlex => match flex::conv_relu_pool(x, weight, bias) {
            Ok(y) => return y,
            // An input the fused kernel does not take (under 2 pixels a side, or channels
            // not matching the weight): Burn's operations, which say what is wrong.
            Err(back) => back,
        },
        #[cfg(feature = "cube")]
        Implementation::FusedCube => match cube::conv_relu_pool(x, weight, bias) {
            Ok(y) => return y,
            Err(back) => back,
        },
        Implementation::Im2col => return im2col::conv_relu_pool(x, weight, bias),
        _ => (x, weight, bias),
    };
    let k = weight.dims()[2];
    let options = ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1);
    max_pool2d(relu(conv2d(x, weight, Some(bias), options)), [2, 2], [2, 2], [0, 0], [1, 1], false)
}

/// Whether `conv` and `pool` are the block [`conv_relu_pool`] computes: a stride-1, SAME,
/// ungrouped convolution with a bias and a 2x2 max-pool with stride 2.
fn is_conv_relu_pool<B: Backend>(conv: &Conv2d<B>, pool: &MaxPool2d) -> bool {
    conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Same)
        && conv.bias.is_some()
        && pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && matches!(pool.padding, PaddingConfig2d::Valid)
        && !pool.ceil_mode
}

/// The implementation [`conv_block`] runs for `conv` and `pool` on `B`.
pub fn conv_block_implementation<B: Backend>(kernels: Kernels, conv: &Conv2d<B>, pool: &MaxPool2d) -> Implementation {
    match &conv.bias {
        // The parameters by reference (`Param` derefs to its tensor): no clone.
        Some(bias) if is_conv_relu_pool(conv, pool) => conv_relu_pool_implementation(kernels, &conv.weight, bias),
        _ => Implementation::Burn,
    }
}

/// `pool.forward(relu(conv.forward(x)))`: `x: [b, c, h, w]` -> `[b, o, h / 2, w / 2]` for
/// the seed's blocks. A block that is [`conv_relu_pool`]'s (SAME, stride 1, a bias, 2x2
/// pool) runs it; any other runs the modules' own forward passes.
pub fn conv_block<B: Backend>(kernels: Kernels, conv: &Conv2d<B>, pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match (conv_block_implementation(kernels, conv, pool), &conv.bias) {
        (Implementation::Burn, _) | (_, None) => pool.forward(relu(conv.forward(x))),
        (_, Some(bias)) => conv_relu_pool(kernels, x, conv.weight.val(), bias.val()),
    }
}

/// The implementation [`fully_connected`] runs on `B` (any batch).
pub fn fully_connected_implementation<B: Backend>(kernels: Kernels) -> Implementation {
    match (kernels, native::<B>()) {
        (Kernels::Fastest, Native::AutodiffFlex | Native::Flex) => Implementation::OwnFlex,
        _ => Implementation::Burn,
    }
}

/// `x weight + bias`: `x: [n, i]`, `weight: [i, j]`, `bias: [j]` -> `[n, j]` (Burn's
/// `Linear` layout). The implementation is [`fully_connected_implementation`]'s. The
/// weight may be stored by rows or by columns (a transposed view, Burn's
/// `LinearLayout::Col`, or [`fully_connected_training_layout`]); on burn-flex the weight's
/// gradient comes stored as the weight is.
///
/// # Panics
/// As Burn's `matmul` does, when the shapes do not fit together.
pub fn fully_connected<B: Backend>(kernels: Kernels, x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match fully_connected_implementation::<B>(kernels) {
        Implementation::OwnFlex => match flex::linear(x, weight, bias) {
            Ok(y) => return y,
            Err(back) => back,
        },
        _ => (x, weight, bias),
    };
    #[cfg(not(feature = "flex"))]
    let _ = kernels;
    burn::tensor::module::linear(x, weight, Some(bias))
}

/// `weight` (`[i, j]`, as [`fully_connected`] takes it) holding the same values, stored
/// as [`fully_connected`] trains fastest with it on `B` at `batch` images a step. On
/// burn-flex (with or without autodiff) with `Kernels::Fastest` and AVX-512 ([`simd`]),
/// at up to [`SMALL_BATCH`] images, a weight of at least 64 x 64 is stored column by
/// column: its buffer is its transpose `[j, i]` (PyTorch's layout, Burn's
/// `LinearLayout::Col`). The sparse backward pass then reads and writes the weight and
/// its gradient where they lie instead of transposing blocks of them, and the forward
/// pass runs the images in the lanes (the layer forward and backward at 50 on a Xeon with
/// AVX-512: 1.17-1.32x; a whole training step: a median of 1.04x over twelve
/// alternations, 0.93-1.18x). Anything else is returned as it is: with AVX2, or at 512
/// images, the layout by rows trained faster.
///
/// The shape, the values, what `into_data` and a saved record hold (row by row, as
/// ever) and whether an autodiff weight is tracked are unchanged; the fused Adam update
/// keeps the layout, and every kernel takes either. A copy of the weight, once: meant for
/// a network about to be trained (`mnist_model::Cnn::with_training_layout`), not for
/// every step.
pub fn fully_connected_training_layout<B: Backend>(kernels: Kernels, weight: Tensor<B, 2>, batch: usize) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if fully_connected_implementation::<B>(kernels) == Implementation::OwnFlex && simd() == Simd::Avx512 && batch <= SMALL_BATCH {
        return flex::training_layout(weight);
    }
    let _ = (kernels, batch);
    weight
}

/// The implementation [`linear`] runs for `layer` on `B` (any batch).
pub fn linear_implementation<B: Backend>(kernels: Kernels, layer: &Linear<B>) -> Implementation {
    match layer.bias {
        Some(_) => fully_connected_implementation::<B>(kernels),
        None => Implementation::Burn,
    }
}

/// `layer.forward(x)`: `x: [n, in]` -> `[n, out]`, through [`fully_connected`] when the
/// layer has a bias.
pub fn linear<B: Backend>(kernels: Kernels, layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    match &layer.bias {
        Some(bias) => fully_connected(kernels, x, layer.weight.val(), bias.val()),
        None => layer.forward(x),
    }
}

/// The implementation [`softmax_cross_entropy`] runs on `B`: the fused CubeCL kernel on
/// burn-wgpu and burn-cuda (with `Kernels::Fastest`), Burn's `CrossEntropyLoss` elsewhere.
pub fn softmax_cross_entropy_implementation<B: Backend>(kernels: Kernels) -> Implementation {
    match (kernels, native::<B>()) {
        (Kernels::Fastest, Native::Cube) => Implementation::FusedCube,
        _ => Implementation::Burn,
    }
}

/// Softmax cross-entropy, the seed's loss: the mean over the `n` rows of
/// `logsumexp(logits[r]) - logits[r, labels[r]]`, `logits: [n, classes]` (unnormalised
/// scores), `labels: [n]` (class indices) -> `[1]`; the same as Burn's `CrossEntropyLoss`
/// with its defaults. On burn-wgpu and burn-cuda ([`softmax_cross_entropy_implementation`])
/// one kernel computes the loss and its gradient together, and the backward pass only
/// scales that gradient; a label outside `0..classes` there gives a NaN loss.
///
/// # Panics
/// As Burn's `CrossEntropyLoss` does, when `labels` has not one label a row.
pub fn softmax_cross_entropy<B: Backend>(kernels: Kernels, logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    #[cfg(feature = "cube")]
    let (logits, labels) = match softmax_cross_entropy_implementation::<B>(kernels) {
        Implementation::FusedCube => match cube::loss::softmax_cross_entropy(logits, labels) {
            Ok(loss) => return loss,
            Err(back) => back,
        },
        _ => (logits, labels),
    };
    #[cfg(not(feature = "cube"))]
    let _ = kernels;
    burn::nn::loss::CrossEntropyLossConfig::new().init::<B>(&logits.device()).forward(logits, labels)
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
