//! The block's kernels on `Fusion<B>` (burn-wgpu's and burn-cuda's default backends): each
//! pass is one custom operation in the fusion stream, run by `B`'s kernels when the stream
//! executes, so nothing waits on the host (the pattern of Burn's backend-extension guide
//! and `burn-vision`).

use std::marker::PhantomData;

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::{BlockBackend, Forward, Grads};
use crate::Geometry;

/// The forward pass as a custom operation: inputs `[x, weight, bias]`, outputs
/// `[y, winners]`.
#[derive(Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    geometry: Geometry,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + BlockBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ([x, weight, bias], [y, winners]) = self.desc.as_fixed::<3, 2>();
        let out = B::block_forward(
            self.geometry,
            handles.get_float_tensor::<B>(x),
            handles.get_float_tensor::<B>(weight),
            handles.get_float_tensor::<B>(bias),
        );
        handles.register_float_tensor::<B>(&y.id, out.y);
        handles.register_int_tensor::<B>(&winners.id, out.winners);
    }
}

/// The backward pass as a custom operation: inputs `[x, weight, winners, grad]`, outputs
/// `[dw, db]`, or `[dw, db, dx]` when the input gradient is wanted.
#[derive(Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    geometry: Geometry,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + BlockBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let [x, weight, winners, grad] = self.desc.inputs.as_slice() else {
            unreachable!("registered with four inputs");
        };
        let input_grad = self.desc.outputs.len() == 3;
        let out = B::block_backward(
            self.geometry,
            handles.get_float_tensor::<B>(x),
            handles.get_float_tensor::<B>(weight),
            handles.get_int_tensor::<B>(winners),
            handles.get_float_tensor::<B>(grad),
            input_grad,
        );
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, out.dw);
        handles.register_float_tensor::<B>(&self.desc.outputs[1].id, out.db);
        if let (Some(dx), Some(ir)) = (out.dx, self.desc.outputs.get(2)) {
            handles.register_float_tensor::<B>(&ir.id, dx);
        }
    }
}

impl<B: FusionBackend + BlockBackend> BlockBackend for Fusion<B> {
    fn block_forward(g: Geometry, x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> Forward<Self> {
        let client = x.client.clone();
        let streams = OperationStreams::with_inputs([&x, &weight, &bias]);
        let (ph, pw) = g.pooled();
        let out = |shape: [usize; 4], dtype| TensorIr::uninit(client.create_empty_handle(), Shape::new(shape), dtype);
        let outputs = [
            out([g.b, g.o, ph, pw], DType::F32),
            out([g.b, g.o, ph, pw], DType::I32),
        ];
        let desc = CustomOpIr::new("mnist_kernels::conv_relu_pool_forward", &[x.into_ir(), weight.into_ir(), bias.into_ir()], &outputs);
        let op = ForwardOp::<B> { desc: desc.clone(), geometry: g, backend: PhantomData };
        let [y, winners]: [_; 2] = client
            .register(streams, OperationIr::Custom(desc), op)
            .try_into()
            .unwrap_or_else(|_| unreachable!("two outputs registered"));
        Forward { y, winners }
    }

    fn block_backward(
        g: Geometry,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        winners: IntTensor<Self>,
        grad: FloatTensor<Self>,
        input_grad: bool,
    ) -> Grads<Self> {
        let client = grad.client.clone();
        let streams = OperationStreams::with_inputs([&x, &weight, &winners, &grad]);
        let out = |shape: Vec<usize>| TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), DType::F32);
        let mut outputs = vec![out(vec![g.o, g.c, g.k, g.k]), out(vec![g.o])];
        if input_grad {
            outputs.push(out(vec![g.b, g.c, g.h, g.w]));
        }
        let inputs = [x.into_ir(), weight.into_ir(), winners.into_ir(), grad.into_ir()];
        let desc = CustomOpIr::new("mnist_kernels::conv_relu_pool_backward", &inputs, &outputs);
        let op = BackwardOp::<B> { desc: desc.clone(), geometry: g, backend: PhantomData };
        let mut results = client.register(streams, OperationIr::Custom(desc), op).into_iter();
        let (Some(dw), Some(db)) = (results.next(), results.next()) else {
            unreachable!("two outputs registered at least");
        };
        Grads { dx: results.next(), dw, db }
    }
}
