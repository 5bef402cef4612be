//! Adam, as Burn computes it, with a fused in-place update on burn-flex.
//!
//! Burn's `Adam` updates each parameter with about a dozen tensor operations, each a full
//! pass over memory: about 15 ms of a 75 ms training step of the seed network on 2 cores.
//! [`FusedAdam`] computes the same formula and keeps Burn's state type ([`AdamState`]:
//! moments and step count, saved in checkpoints as Burn's Adam saves them). On burn-flex
//! (cargo feature `flex`) it updates the parameter and both moments in one parallel,
//! vectorised pass in their tensors' own buffers (copying first only a buffer that is
//! shared) and reads the gradient where it lies; taking the values out as `Vec`s had cost
//! four 13 MB copies a step for fc1 alone, on one core (burn-flex's buffers are
//! over-aligned, so `into_vec` copies). Elsewhere it runs tensor operations.

use burn::optim::{AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Adam with Burn's formula: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, and
/// `p -= lr * m * c / (sqrt(v) + eps * sqrt(1 - b2^t))` with
/// `c = sqrt(1 - b2^t) / (1 - b1^t)`.
#[derive(Debug, Clone, Copy)]
pub struct FusedAdam {
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the denominator.
    pub epsilon: f32,
}

/// The scalars of step `time` (1-based).
struct Factors {
    /// `lr * sqrt(1 - b2^t) / (1 - b1^t)`.
    step: f32,
    /// `eps * sqrt(1 - b2^t)`.
    epsilon: f32,
}

impl FusedAdam {
    fn factors(&self, lr: LearningRate, time: usize) -> Factors {
        let time = i32::try_from(time).unwrap_or(i32::MAX);
        let correction2 = (1.0 - f64::from(self.beta_2).powi(time)).sqrt();
        let combined = correction2 / (1.0 - f64::from(self.beta_1).powi(time));
        Factors { step: (lr * combined) as f32, epsilon: (f64::from(self.epsilon) * correction2) as f32 }
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
        let (tensor, grad, state) = match flex::step(self, lr, tensor, grad, state) {
            Ok(done) => return done,
            Err(back) => back,
        };
        let (b1, b2) = (f64::from(self.beta_1), f64::from(self.beta_2));
        let (m, v, time) = match state {
            Some(s) => (
                s.momentum.moment_1.mul_scalar(b1).add(grad.clone().mul_scalar(1.0 - b1)),
                s.momentum.moment_2.mul_scalar(b2).add(grad.square().mul_scalar(1.0 - b2)),
                s.momentum.time + 1,
            ),
            None => (grad.clone().mul_scalar(1.0 - b1), grad.square().mul_scalar(1.0 - b2), 1),
        };
        let f = self.factors(lr, time);
        let delta = m.clone().mul_scalar(f.step).div(v.clone().sqrt().add_scalar(f.epsilon));
        (tensor.sub(delta), Some(AdamState::new(AdaptiveMomentumState::new(time, m, v))))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::tensor::{DType, TensorPrimitive};
    use burn_flex::{Flex, FlexTensor};
    use mnist_model::flex_host::{cast, from_vec, is_dense, prim_to_vec, recycle};
    use rayon::prelude::*;

    use super::*;

    type Step<B, const D: usize> = (Tensor<B, D>, Option<AdamState<B, D>>);
    type Inputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<AdamState<B, D>>);

    /// The fused update when `B` is burn-flex and everything is f32; else the inputs back.
    pub(super) fn step<B: Backend, const D: usize>(
        adam: &FusedAdam,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamState<B, D>>,
    ) -> Result<Step<B, D>, Inputs<B, D>> {
        let f32_state = state.as_ref().is_none_or(|s| {
            s.momentum.max_moment_2.is_none()
                && s.momentum.moment_1.dtype() == DType::F32
                && s.momentum.moment_2.dtype() == DType::F32
        });
        if !(f32_state && tensor.dtype() == DType::F32 && grad.dtype() == DType::F32) {
            return Err((tensor, grad, state));
        }
        let tensor = match cast::<Tensor<B, D>, Tensor<Flex, D>>(tensor) {
            Ok(t) => t,
            Err(tensor) => return Err((tensor, grad, state)),
        };
        let (Ok(grad), Ok(state)) = (cast::<_, Tensor<Flex, D>>(grad), cast::<_, Option<AdamState<Flex, D>>>(state)) else {
            unreachable!("tensor, gradient and state share the backend B");
        };
        let shape = tensor.shape();
        let n = shape.num_elements();
        let (m, v, time) = match state {
            Some(s) => (s.momentum.moment_1.into_primitive().tensor(), s.momentum.moment_2.into_primitive().tensor(), s.momentum.time + 1),
            None => (FlexTensor::zeros(shape.clone(), DType::F32), FlexTensor::zeros(shape.clone(), DType::F32), 1),
        };
        let (mut p, g, mut m, mut v) = (tensor.into_primitive().tensor(), grad.into_primitive().tensor(), m, v);
        let f = adam.factors(lr, time);
        if [&p, &g, &m, &v].iter().all(|t| is_dense(t) && t.layout().num_elements() == n) {
            // In place in the tensors' own buffers (copied first only where one is shared).
            let (p_slice, m_slice, v_slice) = (&mut p.storage_mut::<f32>()[..n], &mut m.storage_mut::<f32>()[..n], &mut v.storage_mut::<f32>()[..n]);
            update(adam, f, p_slice, &g.storage::<f32>()[..n], m_slice, v_slice);
            // The gradient's last read: its buffer can hold the next step's (fc1's, 13 MB).
            recycle(g);
        } else {
            let (mut pv, gv, mut mv, mut vv) = (prim_to_vec::<D>(p), prim_to_vec::<D>(g), prim_to_vec::<D>(m), prim_to_vec::<D>(v));
            update(adam, f, &mut pv, &gv, &mut mv, &mut vv);
            let back = |values: Vec<f32>| from_vec(values, shape.dims::<D>());
            (p, m, v) = (back(pv), back(mv), back(vv));
        }
        let wrap = |t: FlexTensor| Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t));
        let state = AdamState::new(AdaptiveMomentumState::new(time, wrap(m), wrap(v)));
        let (Ok(tensor), Ok(state)) = (cast::<_, Tensor<B, D>>(wrap(p)), cast::<_, Option<AdamState<B, D>>>(Some(state))) else {
            unreachable!("B is Flex");
        };
        Ok((tensor, state))
    }

    /// One pass over the four arrays, in parallel chunks, compiled for AVX2 where present.
    fn update(adam: &FusedAdam, f: Factors, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let (b1, b2) = (adam.beta_1, adam.beta_2);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                pulp::Arch::new().dispatch(
                    #[inline(always)]
                    || {
                        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * (g * g);
                            *p -= f.step * *m / (v.sqrt() + f.epsilon);
                        }
                    },
                )
            });
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::optim::adaptor::OptimizerAdaptor;
    use burn::tensor::TensorData;
    use burn_autodiff::Autodiff;
    use burn_flex::Flex;
    use mnist_model::{Cnn, CnnConfig};

    use super::*;

    type Ad = Autodiff<Flex>;

    fn values(model: &Cnn<Ad>) -> Vec<f32> {
        let mut out = model.fc1.weight.val().into_data().to_vec::<f32>().unwrap();
        out.extend(model.conv2.weight.val().into_data().to_vec::<f32>().unwrap());
        out.extend(model.fc2.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap());
        out
    }

    /// Five steps of the fused Adam against Burn's, from the same network, fed the same
    /// gradients. (Each optimizer's model computing its own gradients would compare two
    /// chaotic trajectories: Adam divides by `sqrt(v)`, so where a gradient is near zero a
    /// rounding difference in it moves the parameter by a sizeable part of the learning rate.)
    #[test]
    fn fused_adam_follows_burns_adam() {
        let device = Default::default();
        let config = CnnConfig::new().with_hidden(64).with_conv1_channels(4).with_conv2_channels(8);
        let mut ours: Cnn<Ad> = config.init(3, &device).unwrap();
        let mut theirs = ours.clone();
        let fused = FusedAdam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 };
        let mut opt_ours = OptimizerAdaptor::<FusedAdam, Cnn<Ad>, Ad>::from(fused);
        let mut opt_theirs = AdamConfig::new().with_epsilon(1e-8).init::<Ad, Cnn<Ad>>();
        for step in 0..5u64 {
            // A fixed batch per step (no global random state: tests run in parallel).
            let pixels: Vec<f32> = (0..4 * 28 * 28u64).map(|i| ((i * 7919 + step * 104_729) % 1000) as f32 / 1000.0).collect();
            let x = Tensor::<Ad, 4>::from_data(TensorData::new(pixels, [4, 1, 28, 28]), &device);
            let grads = || GradientsParams::from_grads(ours.forward(x.clone()).powi_scalar(2).sum().backward(), &ours);
            let (g_ours, g_theirs) = (grads(), grads());
            theirs = opt_theirs.step(1e-3, theirs, g_theirs);
            ours = opt_ours.step(1e-3, ours, g_ours);
        }
        let (a, b) = (values(&ours), values(&theirs));
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-6, "max difference {d}");
        // The models moved.
        let start = values(&config.init::<Ad>(3, &device).unwrap());
        assert!(a.iter().zip(&start).any(|(x, y)| (x - y).abs() > 1e-3));
    }

    /// The generic path (any backend but flex) follows Burn's Adam too.
    #[test]
    fn generic_path_follows_burns_adam() {
        type Nd = burn_ndarray::NdArray;
        let device = Default::default();
        let fused = FusedAdam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8 };
        let p = Tensor::<Nd, 1>::from_floats([0.5, -1.0, 2.0, 0.0], &device);
        let g = Tensor::<Nd, 1>::from_floats([0.1, -0.2, 0.0, 3.0], &device);
        let (p1, s1) = SimpleOptimizer::<Nd>::step(&fused, 0.1, p, g.clone(), None);
        let (p2, _) = SimpleOptimizer::<Nd>::step(&fused, 0.1, p1.clone(), g, s1);
        // First step of Adam moves each parameter by lr * sign(g) (0 where g is 0).
        let p1 = p1.into_data().to_vec::<f32>().unwrap();
        let expected = [0.4, -0.9, 2.0, -0.1];
        assert!(p1.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-5), "{p1:?}");
        let p2 = p2.into_data().to_vec::<f32>().unwrap();
        let expected = [0.3, -0.8, 2.0, -0.2];
        assert!(p2.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-5), "{p2:?}");
    }
}
