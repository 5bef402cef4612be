//! Adam, as Burn computes it, with a fused in-place update on burn-flex.
//!
//! Burn's `Adam` updates each parameter with about a dozen tensor operations, each a full
//! pass over memory: about 15 ms of a 75 ms training step of the seed network on 2 cores.
//! [`FusedAdam`] keeps Burn's state type ([`AdamState`]: moments and step count, saved in
//! checkpoints as Burn's Adam saves them) and, on burn-flex (cargo feature `flex`),
//! updates the parameter and both moments in one parallel, vectorised pass in their
//! tensors' own buffers (copying first only a buffer that is shared), reading the gradient
//! where it lies; taking the values out as `Vec`s had cost four 13 MB copies a step for
//! fc1 alone, on one core (burn-flex's buffers are over-aligned, so `into_vec` copies).
//! On the CubeCL backends (burn-wgpu's and burn-cuda's, cargo features `wgpu` and `cuda`)
//! it is one kernel launch per parameter, reading and writing the parameter and both
//! moments in place (`cube/adam.rs`). On every other backend it is Burn's own `Adam`,
//! built from the same values.

use std::fmt;

use burn::config::Config;
use burn::optim::{Adam, AdamConfig, AdamState, LearningRate, SimpleOptimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::{Implementation, Native, native};

/// Adam's hyperparameters, named as Burn's [`AdamConfig`] names them (without weight
/// decay, AMSGrad or gradient clipping, which the fused update does not do). The defaults
/// are TensorFlow's, as the seed uses them (Burn's epsilon default is 1e-5).
#[derive(Config, Debug, PartialEq)]
pub struct FusedAdamConfig {
    /// Decay of the first moment.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// Decay of the second moment.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Added to the denominator, for numerical stability.
    #[config(default = 1e-8)]
    pub epsilon: f32,
}

impl FusedAdamConfig {
    /// The same values as Burn's [`AdamConfig`].
    pub fn to_burn(&self) -> AdamConfig {
        AdamConfig::new().with_beta_1(self.beta_1).with_beta_2(self.beta_2).with_epsilon(self.epsilon)
    }

    /// The optimizer (wrap it in Burn's `OptimizerAdaptor` to step a module).
    pub fn init(&self) -> FusedAdam {
        FusedAdam { config: self.clone(), burn: self.to_burn().build() }
    }
}

/// Adam with Burn's formula: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, and
/// `p -= lr * m * c / (sqrt(v) + eps * sqrt(1 - b2^t))` with
/// `c = sqrt(1 - b2^t) / (1 - b1^t)` (Kingma and Ba, "Adam", 2015, section 2, with the
/// bias correction folded into the step size as Burn does). Built by
/// [`FusedAdamConfig::init`].
#[derive(Clone)]
pub struct FusedAdam {
    config: FusedAdamConfig,
    /// Burn's Adam with the same values, for every backend but burn-flex.
    burn: Adam,
}

impl fmt::Debug for FusedAdam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FusedAdam").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What a fused update returns: the new parameter and state.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) type Step<B, const D: usize> = (Tensor<B, D>, Option<AdamState<B, D>>);
/// What a fused update hands back when it does not run: its inputs, untouched.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) type Inputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<AdamState<B, D>>);

/// Whether the parameter, its gradient and its state (if any) are all f32, without
/// AMSGrad's extra moment: what the fused updates take.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) fn all_f32<B: Backend, const D: usize>(tensor: &Tensor<B, D>, grad: &Tensor<B, D>, state: Option<&AdamState<B, D>>) -> bool {
    let f32_state = state.is_none_or(|s| {
        s.momentum.max_moment_2.is_none() && s.momentum.moment_1.dtype() == DType::F32 && s.momentum.moment_2.dtype() == DType::F32
    });
    f32_state && tensor.dtype() == DType::F32 && grad.dtype() == DType::F32
}

/// The scalars of step `time` (1-based).
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) struct Factors {
    /// `lr * sqrt(1 - b2^t) / (1 - b1^t)`.
    pub(crate) step: f32,
    /// `eps * sqrt(1 - b2^t)`.
    pub(crate) epsilon: f32,
}

impl FusedAdam {
    /// Its hyperparameters.
    pub fn config(&self) -> &FusedAdamConfig {
        &self.config
    }

    /// The implementation that updates f32 parameters of backend `B` (for training, the
    /// autodiff backend's inner backend: the optimizer steps on that): the fused update
    /// on burn-flex and the CubeCL backends, Burn's `Adam` elsewhere.
    pub fn implementation<B: Backend>() -> Implementation {
        match native::<B>() {
            Native::Flex | Native::Cube => Implementation::FusedAdam,
            _ => Implementation::BurnAdam,
        }
    }

    #[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
    pub(crate) fn factors(&self, lr: LearningRate, time: usize) -> Factors {
        let time = i32::try_from(time).unwrap_or(i32::MAX);
        let correction2 = (1.0 - f64::from(self.config.beta_2).powi(time)).sqrt();
        let combined = correction2 / (1.0 - f64::from(self.config.beta_1).powi(time));
        Factors { step: (lr * combined) as f32, epsilon: (f64::from(self.config.epsilon) * correction2) as f32 }
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        let (tensor, grad, state) = match crate::flex::adam::step(self, lr, tensor, grad, state) {
            Ok(done) => return done,
            Err(back) => back,
        };
        #[cfg(feature = "cube")]
        let (tensor, grad, state) = match crate::cube::adam::step(self, lr, tensor, grad, state) {
            Ok(done) => return done,
            Err(back) => back,
        };
        SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    use super::*;

    /// Pseudo-random values in [-1, 1) for step `seed`.
    pub(crate) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729 + 13) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    /// `steps` updates of a parameter of `n` values by `optim`, fed the same gradients
    /// (`transposed`: the parameter as a transposed, so non-contiguous, view).
    pub(crate) fn run<B: Backend, O: SimpleOptimizer<B, State<2> = AdamState<B, 2>>>(optim: &O, n: usize, transposed: bool, steps: usize) -> Vec<f32> {
        let device = Default::default();
        let rows = n / 8;
        let mut p = match transposed {
            false => Tensor::<B, 2>::from_data(TensorData::new(values(n, 99), [rows, 8]), &device),
            true => Tensor::<B, 2>::from_data(TensorData::new(values(n, 99), [8, rows]), &device).transpose(),
        };
        let mut state = None;
        for step in 0..steps {
            // A gradient with exact zeros, as ReLU networks give.
            let g: Vec<f32> = values(n, step).into_iter().map(|v| if v.abs() < 0.1 { 0.0 } else { v }).collect();
            let g = Tensor::<B, 2>::from_data(TensorData::new(g, [rows, 8]), &device);
            let (next, s) = optim.step(1e-3, p, g, state);
            (p, state) = (next, s);
        }
        p.into_data().to_vec::<f32>().expect("f32")
    }

    /// The fused update on burn-flex against Burn's Adam, five steps, on a small
    /// parameter, a large one (2 MiB: over the spare-buffer threshold) and a view that is
    /// not contiguous.
    #[test]
    fn fused_adam_follows_burns_adam() {
        let config = FusedAdamConfig::new();
        let (fused, burn) = (config.init(), config.to_burn().build());
        assert_eq!(FusedAdam::implementation::<Flex>(), if cfg!(feature = "flex") { Implementation::FusedAdam } else { Implementation::BurnAdam });
        for (n, transposed) in [(40, false), (1 << 19, false), (48, true)] {
            let ours = run::<Flex, _>(&fused, n, transposed, 5);
            let theirs = run::<Flex, _>(&burn, n, transposed, 5);
            let d = ours.iter().zip(&theirs).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(d <= 1e-6, "n = {n}: max difference {d}");
            // The parameter moved (by about lr a step).
            let start = values(n, 99);
            assert!(ours.iter().zip(&start).any(|(x, y)| (x - y).abs() > 1e-3));
        }
    }

    /// Elsewhere it is Burn's Adam: Adam's first step moves each parameter by lr * sign(g)
    /// (0 where g is 0), and the second, with the same gradient, by lr again.
    #[test]
    fn other_backends_take_burns_adam() {
        type Nd = burn_ndarray::NdArray;
        assert_eq!(FusedAdam::implementation::<Nd>(), Implementation::BurnAdam);
        let device = Default::default();
        let fused = FusedAdamConfig::new().init();
        let p = Tensor::<Nd, 1>::from_floats([0.5, -1.0, 2.0, 0.0], &device);
        let g = Tensor::<Nd, 1>::from_floats([0.1, -0.2, 0.0, 3.0], &device);
        let (p1, s1) = SimpleOptimizer::<Nd>::step(&fused, 0.1, p, g.clone(), None);
        let (p2, _) = SimpleOptimizer::<Nd>::step(&fused, 0.1, p1.clone(), g, s1);
        let p1 = p1.into_data().to_vec::<f32>().expect("f32");
        assert!(p1.iter().zip([0.4, -0.9, 2.0, -0.1]).all(|(a, b)| (a - b).abs() < 1e-5), "{p1:?}");
        let p2 = p2.into_data().to_vec::<f32>().expect("f32");
        assert!(p2.iter().zip([0.3, -0.8, 2.0, -0.2]).all(|(a, b)| (a - b).abs() < 1e-5), "{p2:?}");
    }

    #[test]
    fn the_config_is_burns_with_tensorflows_epsilon() {
        let config = FusedAdamConfig::new();
        assert_eq!((config.beta_1, config.beta_2, config.epsilon), (0.9, 0.999, 1e-8));
        let burn = serde_json::to_value(config.to_burn()).expect("serialisable");
        assert_eq!((burn["beta_1"].as_f64(), burn["epsilon"].as_f64().map(|e| e as f32)), (Some(0.9f32 as f64), Some(1e-8)));
    }
}
