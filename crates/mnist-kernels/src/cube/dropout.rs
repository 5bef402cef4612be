//! The dropout mask on the device: one thread per element computes the hash of
//! [`crate::dropout`], so a training step copies no mask from the host (50 x 1,024 floats
//! a step for the seed) and the mask is bit for bit the CPU's.

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, get_client};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::grid;
use crate::cast;
use crate::dropout::MaskKey;

/// The kernels apart, where `Tensor` is CubeCL's, not Burn's.
mod kernel {
    use cubecl::prelude::*;

    /// Wellons's `lowbias32`, as `crate::dropout::lowbias32` computes it (u32 arithmetic
    /// wraps on every CubeCL runtime).
    #[cube]
    fn lowbias32(x: u32) -> u32 {
        let mut x = x;
        x ^= x >> 16u32;
        x *= 0x7feb_352du32;
        x ^= x >> 15u32;
        x *= 0x846c_a68bu32;
        x ^= x >> 16u32;
        x
    }

    /// `mask[i] = scale` when the top 24 bits of `lowbias32(lowbias32(i ^ k0) ^ k1)` are
    /// below `threshold`, else 0.
    #[cube(launch)]
    pub(super) fn mask_kernel(mask: &mut Tensor<f32>, k0: u32, k1: u32, threshold: u32, scale: f32) {
        let pos = ABSOLUTE_POS;
        if pos >= mask.len() {
            terminate!();
        }
        let x = lowbias32(lowbias32((pos as u32) ^ k0) ^ k1);
        let mut value = 0.0f32;
        if (x >> 8u32) < threshold {
            value = scale;
        }
        mask[pos] = value;
    }
}

/// A backend that computes dropout masks on its device.
pub(crate) trait MaskBackend: Backend {
    /// The mask `[batch, width]` of `key`.
    fn dropout_mask(shape: [usize; 2], key: MaskKey, device: &Self::Device) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, BT: BoolElement> MaskBackend for CubeBackend<R, f32, i32, BT> {
    fn dropout_mask(shape: [usize; 2], key: MaskKey, device: &Self::Device) -> FloatTensor<Self> {
        let client = R::client(device);
        let mask = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new(shape));
        let (count, dim) = grid(&client, mask.meta.num_elements());
        kernel::mask_kernel::launch(&client, count, dim, mask.clone().into_tensor_arg(), key.k0, key.k1, key.threshold, key.scale);
        mask
    }
}

/// The mask as a custom operation without inputs: output `[mask]`.
#[derive(Debug)]
struct MaskOp<B: Backend> {
    desc: CustomOpIr,
    shape: [usize; 2],
    key: MaskKey,
    device: B::Device,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + MaskBackend> Operation<B::FusionRuntime> for MaskOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ([], [mask]) = self.desc.as_fixed::<0, 1>();
        handles.register_float_tensor::<B>(&mask.id, B::dropout_mask(self.shape, self.key, &self.device));
    }
}

impl<B: FusionBackend + MaskBackend> MaskBackend for Fusion<B> {
    fn dropout_mask(shape: [usize; 2], key: MaskKey, device: &Self::Device) -> FloatTensor<Self> {
        let client = get_client::<B>(device);
        let outputs = [TensorIr::uninit(client.create_empty_handle(), Shape::new(shape), DType::F32)];
        let desc = CustomOpIr::new("mnist_kernels::dropout_mask", &[], &outputs);
        let op = MaskOp::<B> { desc: desc.clone(), shape, key, device: device.clone(), backend: PhantomData };
        let [mask]: [_; 1] = client
            .register(OperationStreams::default(), OperationIr::Custom(desc), op)
            .try_into()
            .unwrap_or_else(|_| unreachable!("one output registered"));
        mask
    }
}

/// The mask on `C` when `B` is `C` or `Autodiff<C>` (untracked), else `None`.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn on<B: Backend, C: MaskBackend>(shape: [usize; 2], key: MaskKey, device: &B::Device) -> Option<Tensor<B, 2>> {
    let device = cast::<B::Device, C::Device>(device.clone()).ok()?;
    let mask = Tensor::<C, 2>::from_primitive(TensorPrimitive::Float(C::dropout_mask(shape, key, &device)));
    match cast::<Tensor<C, 2>, Tensor<B, 2>>(mask) {
        Ok(mask) => Some(mask),
        Err(mask) => cast::<Tensor<Autodiff<C>, 2>, Tensor<B, 2>>(Tensor::from_inner(mask)).ok(),
    }
}

/// The mask computed on the device when `B` is one of the CubeCL backends compiled in
/// (with or without autodiff); `None` for every other backend.
pub(crate) fn mask<B: Backend>(shape: [usize; 2], key: MaskKey, device: &B::Device) -> Option<Tensor<B, 2>> {
    if crate::native::<B>() != crate::Native::Cube {
        return None;
    }
    #[cfg(feature = "wgpu")]
    if let Some(mask) = on::<B, burn_wgpu::Wgpu>(shape, key, device) {
        return Some(mask);
    }
    #[cfg(feature = "cuda")]
    if let Some(mask) = on::<B, burn_cuda::Cuda>(shape, key, device) {
        return Some(mask);
    }
    let _ = (shape, key, device);
    None
}
