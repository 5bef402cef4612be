//! Adam, as Burn computes it, with a fused in-place update on burn-flex and the CubeCL
//! backends.
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
//! it is a kernel reading and writing the parameter and both moments in place
//! (`cube/adam.rs`). On every other backend it is Burn's own `Adam`, built from the same
//! values.
//!
//! [`FusedAdam`] is a `SimpleOptimizer`, stepping one parameter at a time (in Burn's
//! `OptimizerAdaptor`); [`FusedAdamOptimizer`] steps a whole module, and on the CubeCL
//! backends updates all of its parameters in one kernel launch where the device binds
//! enough buffers (a GPU step at batch 50 is bound by its launches), with the same state
//! record as the adaptor's.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use burn::config::Config;
use burn::module::{AutodiffModule, ModuleMapper, Param, ParamId};
use burn::optim::adaptor::{GradAdaptor, OptimizerAdaptor};
use burn::optim::record::AdaptorRecord;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, GradientsParams, LearningRate, MultiGradientsParams, Optimizer,
    SimpleOptimizer,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::{Implementation, Native, float, native};

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

    /// The optimizer of one parameter at a time (wrap it in Burn's `OptimizerAdaptor`
    /// to step a module, or use [`Self::init_module`]).
    pub fn init(&self) -> FusedAdam {
        FusedAdam { config: self.clone(), burn: self.to_burn().build() }
    }

    /// The optimizer of a whole module `M` ([`FusedAdamOptimizer`]).
    pub fn init_module<M: AutodiffModule<B>, B: AutodiffBackend>(&self) -> FusedAdamOptimizer<M, B> {
        FusedAdamOptimizer { adam: self.init(), records: Records::<M, B>::default(), module: PhantomData }
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

/// One parameter's update, its rank erased: the parameter `p`, its gradient `g` and both
/// moments (zeros before the first step), all f32 of one shape, and the step count `time`
/// this update makes (1-based). (Read only by the fused kernels' features.)
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(dead_code))]
pub(crate) struct Operands<B: Backend> {
    pub(crate) p: FloatTensor<B>,
    pub(crate) g: FloatTensor<B>,
    pub(crate) m: FloatTensor<B>,
    pub(crate) v: FloatTensor<B>,
    pub(crate) time: usize,
}

/// What an update gives back: the parameter and both moments.
pub(crate) struct Updated<B: Backend> {
    pub(crate) p: FloatTensor<B>,
    pub(crate) m: FloatTensor<B>,
    pub(crate) v: FloatTensor<B>,
}

impl<B: Backend> Operands<B> {
    /// The operands of one step of `tensor`, checked by [`all_f32`].
    fn new<const D: usize>(tensor: Tensor<B, D>, grad: Tensor<B, D>, state: Option<AdamState<B, D>>) -> Self {
        let (m, v, time) = match state {
            Some(s) => (s.momentum.moment_1, s.momentum.moment_2, s.momentum.time + 1),
            None => (tensor.zeros_like(), tensor.zeros_like(), 1),
        };
        Operands { p: float(tensor), g: float(grad), m: float(m), v: float(v), time }
    }
}

impl<B: Backend> Updated<B> {
    /// The new parameter `[D]` and its state after step `time`.
    fn into_step<const D: usize>(self, time: usize) -> (Tensor<B, D>, AdamState<B, D>) {
        let wrap = |t: FloatTensor<B>| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(t));
        (wrap(self.p), AdamState::new(AdaptiveMomentumState::new(time, wrap(self.m), wrap(self.v))))
    }
}

/// `update` on backend `C` when `B` is `C` (a `TypeId` check; nothing is copied): the
/// operands cast in and the results cast out; the operands back when `B` is another
/// backend.
#[cfg(any(feature = "flex", feature = "cube"))]
pub(crate) fn on_backend<B: Backend, C: Backend>(
    ops: Vec<Operands<B>>,
    update: impl FnOnce(Vec<Operands<C>>) -> Vec<Updated<C>>,
) -> Result<Vec<Updated<B>>, Vec<Operands<B>>> {
    let ops = crate::cast::<Vec<Operands<B>>, Vec<Operands<C>>>(ops)?;
    Ok(crate::cast::<_, Vec<Updated<B>>>(update(ops)).unwrap_or_else(|_| unreachable!("B is C")))
}

/// Whether the parameter, its gradient and its state (if any) are all f32, without
/// AMSGrad's extra moment: what the fused updates take.
fn all_f32<B: Backend, const D: usize>(tensor: &Tensor<B, D>, grad: &Tensor<B, D>, state: Option<&AdamState<B, D>>) -> bool {
    let f32_state = state.is_none_or(|s| {
        s.momentum.max_moment_2.is_none() && s.momentum.moment_1.dtype() == DType::F32 && s.momentum.moment_2.dtype() == DType::F32
    });
    f32_state && tensor.dtype() == DType::F32 && grad.dtype() == DType::F32
}

/// The scalars of step `time` (1-based).
#[derive(Debug, Clone, Copy)]
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

impl FusedAdam {
    /// The fused updates of `ops` on `B`, a backend [`Self::implementation`] names fused,
    /// in their order.
    fn fused<B: Backend>(&self, lr: LearningRate, ops: Vec<Operands<B>>) -> Vec<Updated<B>> {
        #[cfg(feature = "flex")]
        let ops = match crate::flex::adam::update(self, lr, ops) {
            Ok(done) => return done,
            Err(back) => back,
        };
        #[cfg(feature = "cube")]
        let ops = match crate::cube::adam::update(self, lr, ops) {
            Ok(done) => return done,
            Err(back) => back,
        };
        let _ = (lr, ops);
        unreachable!("`implementation` names fused only the backends with a fused update")
    }

    /// Whether the fused update takes this step of `tensor` on `B`.
    fn takes<B: Backend, const D: usize>(tensor: &Tensor<B, D>, grad: &Tensor<B, D>, state: Option<&AdamState<B, D>>) -> bool {
        Self::implementation::<B>() == Implementation::FusedAdam && all_f32(tensor, grad, state)
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
        if !Self::takes(&tensor, &grad, state.as_ref()) {
            return SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state);
        }
        let ops = Operands::new(tensor, grad, state);
        let time = ops.time;
        let done = self.fused(lr, vec![ops]).pop().unwrap_or_else(|| unreachable!("one update asked for"));
        let (tensor, state) = done.into_step(time);
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// The optimizer state of a module: each parameter's moments and step count by its id,
/// the record Burn's `OptimizerAdaptor` keeps for [`FusedAdam`] (so checkpoints written by
/// either load in the other).
type Records<M, B> = <OptimizerAdaptor<FusedAdam, M, B> as Optimizer<M, B>>::Record;

/// [`FusedAdam`] stepping a whole module `M`: on the CubeCL backends every f32 parameter
/// of the module is updated in one kernel launch (as few as the device's buffer bindings
/// allow: four per parameter), where Burn's `OptimizerAdaptor` makes one launch per
/// parameter; elsewhere one parameter at a time, as the adaptor does. The record is the
/// adaptor's. Gradient clipping is not offered. Built by [`FusedAdamConfig::init_module`].
pub struct FusedAdamOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    adam: FusedAdam,
    records: Records<M, B>,
    module: PhantomData<fn() -> M>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Clone for FusedAdamOptimizer<M, B> {
    fn clone(&self) -> Self {
        FusedAdamOptimizer { adam: self.adam.clone(), records: self.records.clone(), module: PhantomData }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> fmt::Debug for FusedAdamOptimizer<M, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FusedAdamOptimizer").field("adam", &self.adam).field("parameters", &self.records.len()).finish()
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> FusedAdamOptimizer<M, B> {
    /// The per-parameter optimizer it applies.
    pub fn adam(&self) -> &FusedAdam {
        &self.adam
    }

    fn step_with(&mut self, lr: LearningRate, module: M, mut grads: GradAdaptor) -> M {
        if native::<B::InnerBackend>() != Native::Cube {
            return module.map(&mut EachParam::<M, B> { adam: &self.adam, records: &mut self.records, grads: &mut grads, lr });
        }
        // Every parameter with a gradient is taken out of the module (its gradient left in
        // its place), all are updated at once, and the results put in their places.
        let mut take = Take::<M, B> { each: EachParam::<M, B> { adam: &self.adam, records: &mut self.records, grads: &mut grads, lr }, ops: Vec::new(), ids: Vec::new() };
        let module = module.map(&mut take);
        let (ops, ids) = (take.ops, take.ids);
        let done = self.adam.fused(lr, ops);
        let mut put = Put::<M, B> { records: &mut self.records, done: ids.into_iter().zip(done).map(|((id, time, tracked), u)| (id, (u, time, tracked))).collect() };
        let module = module.map(&mut put);
        debug_assert!(put.done.is_empty(), "every parameter taken is put back");
        module
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optimizer<M, B> for FusedAdamOptimizer<M, B> {
    type Record = Records<M, B>;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.step_with(lr, module, grads.into())
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        self.step_with(lr, module, grads.into())
    }

    fn to_record(&self) -> Self::Record {
        self.records.clone()
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.records = record;
        self
    }
}

/// One parameter at a time, as Burn's `OptimizerAdaptor` steps a module.
struct EachParam<'a, M: AutodiffModule<B>, B: AutodiffBackend> {
    adam: &'a FusedAdam,
    records: &'a mut Records<M, B>,
    grads: &'a mut GradAdaptor,
    lr: LearningRate,
}

/// A parameter's gradient (moved to the device it lives on, as the adaptor does), the
/// parameter on that device, whether it is tracked, and its state.
struct Taken<B: AutodiffBackend, const D: usize> {
    tensor: Tensor<B::InnerBackend, D>,
    grad: Tensor<B::InnerBackend, D>,
    state: Option<AdamState<B::InnerBackend, D>>,
    tracked: bool,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> EachParam<'_, M, B> {
    /// The parameter `id` with its gradient and state, taken out of the optimizer's
    /// state; the tensor back when it has no gradient this step.
    fn take<const D: usize>(&mut self, id: ParamId, tensor: Tensor<B, D>) -> Result<Taken<B, D>, Tensor<B, D>> {
        let Some((grad, device)) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Err(tensor);
        };
        let tracked = tensor.is_require_grad();
        let tensor = if tensor.device() != device { tensor.to_device(&device) } else { tensor };
        let state = self.records.remove(&id).map(|r| <FusedAdam as SimpleOptimizer<B::InnerBackend>>::to_device(r.into_state::<D>(), &device));
        Ok(Taken { tensor: tensor.inner(), grad, state, tracked })
    }

    /// The updated parameter `id`, tracked again if it was, its state recorded.
    fn give<const D: usize>(records: &mut Records<M, B>, id: ParamId, tensor: Tensor<B::InnerBackend, D>, state: Option<AdamState<B::InnerBackend, D>>, tracked: bool) -> Tensor<B, D> {
        if let Some(state) = state {
            records.insert(id, AdaptorRecord::from_state(state));
        }
        let tensor = Tensor::from_inner(tensor);
        if tracked { tensor.require_grad() } else { tensor }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> ModuleMapper<B> for EachParam<'_, M, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.take(id, tensor) {
            Ok(t) => {
                let (tensor, state) = SimpleOptimizer::step(self.adam, self.lr, t.tensor, t.grad, t.state);
                Self::give(self.records, id, tensor, state, t.tracked)
            }
            Err(untouched) => untouched,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// The first pass of the update of all parameters at once: the operands of each f32
/// parameter with a gradient are taken, and its gradient (wrapped, untracked) left in its
/// place; a parameter the fused update does not take is stepped on its own.
struct Take<'a, M: AutodiffModule<B>, B: AutodiffBackend> {
    each: EachParam<'a, M, B>,
    ops: Vec<Operands<B::InnerBackend>>,
    /// Each operand's parameter, step count and whether it is tracked.
    ids: Vec<(ParamId, usize, bool)>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> ModuleMapper<B> for Take<'_, M, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.each.take(id, tensor) {
            Ok(t) if FusedAdam::takes(&t.tensor, &t.grad, t.state.as_ref()) => {
                let in_place = Tensor::from_inner(t.grad.clone());
                let ops = Operands::new(t.tensor, t.grad, t.state);
                self.ids.push((id, ops.time, t.tracked));
                self.ops.push(ops);
                in_place
            }
            Ok(t) => {
                let (tensor, state) = SimpleOptimizer::step(self.each.adam, self.each.lr, t.tensor, t.grad, t.state);
                EachParam::<M, B>::give(self.each.records, id, tensor, state, t.tracked)
            }
            Err(untouched) => untouched,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// The second pass: each taken parameter's place gets its update, and its state the
/// new moments.
struct Put<'a, M: AutodiffModule<B>, B: AutodiffBackend> {
    records: &'a mut Records<M, B>,
    done: HashMap<ParamId, (Updated<B::InnerBackend>, usize, bool)>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> ModuleMapper<B> for Put<'_, M, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some((updated, time, tracked)) = self.done.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let (tensor, state) = updated.into_step::<D>(time);
        Param::from_mapped_value(id, EachParam::<M, B>::give(self.records, id, tensor, Some(state), tracked), mapper)
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

    /// A module with parameters of ranks 1, 2 and 4, and a layer that gets no gradient.
    #[derive(burn::module::Module, Debug)]
    pub(crate) struct Small<B: Backend> {
        dense: burn::nn::Linear<B>,
        conv: burn::nn::conv::Conv2d<B>,
        unused: burn::nn::Linear<B>,
    }

    impl<B: AutodiffBackend> Small<B> {
        fn new(device: &B::Device) -> Self {
            let fill = |t: Tensor<B, 4>, seed| {
                let [a, b, c, d] = t.dims();
                Tensor::<B, 4>::from_data(TensorData::new(values(a * b * c * d, seed), [a, b, c, d]), device)
            };
            let mut small = Small {
                dense: burn::nn::LinearConfig::new(7, 3).init(device),
                conv: burn::nn::conv::Conv2dConfig::new([2, 3], [3, 3]).init(device),
                unused: burn::nn::LinearConfig::new(4, 2).init(device),
            };
            // Fixed values, the same on every backend.
            small.conv.weight = Param::from_tensor(fill(small.conv.weight.val(), 3));
            small.dense.weight = Param::from_tensor(fill(small.dense.weight.val().unsqueeze::<4>(), 5).squeeze_dims(&[0, 1]));
            small
        }

        /// A loss whose gradients change as the parameters move.
        fn loss(&self, device: &B::Device) -> Tensor<B, 1> {
            let x = Tensor::<B, 2>::from_data(TensorData::new(values(14, 7), [2, 7]), device);
            let image = Tensor::<B, 4>::from_data(TensorData::new(values(50, 8), [1, 2, 5, 5]), device);
            self.dense.forward(x).tanh().powf_scalar(2.0).sum() + self.conv.forward(image).tanh().sum()
        }

        fn values(&self) -> Vec<Vec<f32>> {
            let read = |t: Tensor<B::InnerBackend, 1>| t.into_data().to_vec::<f32>().expect("f32");
            vec![
                read(self.dense.weight.val().inner().flatten(0, 1)),
                read(self.dense.bias.as_ref().expect("bias").val().inner()),
                read(self.conv.weight.val().inner().flatten(0, 3)),
                read(self.conv.bias.as_ref().expect("bias").val().inner()),
                read(self.unused.weight.val().inner().flatten(0, 1)),
            ]
        }
    }

    /// `steps` steps of `optim` on `small` at learning rate 1e-2.
    fn train<B: AutodiffBackend, O: Optimizer<Small<B>, B>>(mut small: Small<B>, optim: &mut O, steps: usize) -> Small<B> {
        let device = small.dense.weight.val().device();
        for _ in 0..steps {
            let grads = GradientsParams::from_grads(small.loss(&device).backward(), &small);
            small = optim.step(1e-2, small, grads);
        }
        small
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(x, y)| (x - y).abs())).fold(0.0, f32::max)
    }

    /// [`FusedAdamOptimizer`] on `B` against Burn's Adam through its `OptimizerAdaptor`:
    /// four steps of a module with parameters of three ranks (the parameters still
    /// tracked after each step, or the next would have no gradients), a layer without
    /// gradients left alone and out of the record, and the record the same as
    /// `OptimizerAdaptor<FusedAdam>`'s: each loads the other's and goes on alike.
    pub(crate) fn module_optimizer_follows_burns_adam<B: AutodiffBackend>() {
        let device = Default::default();
        let config = FusedAdamConfig::new();
        let start = Small::<B>::new(&device);
        let before = start.values();
        let mut ours = config.init_module::<Small<B>, B>();
        let mut burns = config.to_burn().init::<B, Small<B>>();
        let a = train(start.clone(), &mut ours, 4);
        let b = train(start.clone(), &mut burns, 4);
        let (va, vb) = (a.values(), b.values());
        assert!(max_diff(&va, &vb) <= 1e-6, "against Burn's Adam: {}", max_diff(&va, &vb));
        assert!(max_diff(&va[..4], &before[..4]) > 1e-2, "the parameters moved");
        assert_eq!(va[4], before[4], "the layer without gradients is left alone");
        let record = ours.to_record();
        assert_eq!(record.len(), 4, "one state per parameter with a gradient");
        assert!(!record.contains_key(&a.unused.weight.id));
        // The adaptor's record is ours: each picks up where the other stopped.
        let mut adaptor = OptimizerAdaptor::<FusedAdam, Small<B>, B>::from(config.init()).load_record(record);
        let c = train(a.clone(), &mut adaptor, 2);
        let d = train(a, &mut ours, 2);
        assert!(max_diff(&c.values(), &d.values()) <= 1e-6, "the adaptor with our record: {}", max_diff(&c.values(), &d.values()));
        let mut again = config.init_module::<Small<B>, B>().load_record(adaptor.to_record());
        let (e, e_ref) = (train(c.clone(), &mut again, 1), train(c, &mut adaptor, 1));
        assert!(max_diff(&e.values(), &e_ref.values()) <= 1e-6, "ours with the adaptor's record: {}", max_diff(&e.values(), &e_ref.values()));
    }

    #[test]
    fn module_optimizer_on_flex_follows_burns_adam() {
        module_optimizer_follows_burns_adam::<burn_autodiff::Autodiff<Flex>>();
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

    /// A parameter stored by columns (fc1's weight in training, at 50 images with AVX-512)
    /// stays so through the fused update, with gradients stored so and moments that start
    /// (or come from a checkpoint) by rows, and moves as the same parameter stored by rows
    /// does.
    #[cfg(feature = "flex")]
    #[test]
    fn a_parameter_stored_by_columns_stays_so() {
        use crate::flex::is_dense_by_columns;
        let (i, j) = (96, 40);
        let device = Default::default();
        let by_columns = |v: Vec<f32>| Tensor::<Flex, 2>::from_data(TensorData::new(v, [i, j]), &device).transpose().into_data();
        // `[i, j]` values `v`, stored by columns: the transpose of a dense `[j, i]`.
        let stored = |v: Vec<f32>| Tensor::<Flex, 2>::from_data(by_columns(v), &device).transpose();
        let dense = |v: Vec<f32>| Tensor::<Flex, 2>::from_data(TensorData::new(v, [i, j]), &device);
        let adam = FusedAdamConfig::new().init();
        let (mut p, mut q) = (stored(values(i * j, 99)), dense(values(i * j, 99)));
        let (mut ps, mut qs) = (None, None);
        for step in 0..3 {
            let g = values(i * j, step);
            (p, ps) = SimpleOptimizer::<Flex>::step(&adam, 1e-3, p, stored(g.clone()), ps);
            (q, qs) = SimpleOptimizer::<Flex>::step(&adam, 1e-3, q, dense(g), qs);
            assert!(is_dense_by_columns(&crate::float(p.clone())), "step {step}: stored by columns");
            let moments = &ps.as_ref().expect("state").momentum;
            assert!(is_dense_by_columns(&crate::float(moments.moment_1.clone())), "step {step}: its moments too");
            assert!(is_dense_by_columns(&crate::float(moments.moment_2.clone())), "step {step}: its moments too");
        }
        let (a, b) = (p.into_data().to_vec::<f32>().expect("f32"), q.into_data().to_vec::<f32>().expect("f32"));
        assert_eq!(a, b, "the same values as by rows");
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
