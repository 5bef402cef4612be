//! What the kernels' unit tests share: the block held to Burn's operations on any autodiff
//! backend, forward and every gradient.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::tensor::activation::relu;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor, TensorData};

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

/// 1 for each pooling window of `conv: [b, o, h, w]` with a clear winner, else 0.
fn clear_windows(conv: &[f32], [b, o, h, w]: [usize; 4]) -> Vec<f32> {
    let (ph, pw) = (h / 2, w / 2);
    let mut mask = Vec::with_capacity(b * o * ph * pw);
    for plane in conv.chunks_exact(h * w).take(b * o) {
        for py in 0..ph {
            for px in 0..pw {
                let mut four: Vec<f32> = (0..4).map(|q| plane[(2 * py + q / 2) * w + 2 * px + q % 2]).collect();
                four.sort_by(|a, b| b.total_cmp(a));
                mask.push(if four[0] - four[1] > 1e-3 && four[0].abs() > 1e-3 { 1.0 } else { 0.0 });
            }
        }
    }
    mask
}

/// A fused block `fused(x, weight, bias)` on `B` against Burn's conv2d + relu + max_pool2d,
/// forward and every gradient, for each `(b, c, h, w, o, k)` in `shapes`; the input
/// gradient only where `input_grad` (otherwise the input is untracked, as the first
/// layer's images are, and must get no gradient).
pub(crate) fn block_matches_burn<B: AutodiffBackend>(
    fused: impl Fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>) -> Tensor<B, 4>,
    shapes: &[(usize, usize, usize, usize, usize, usize, bool)],
) {
    let device = Default::default();
    for &(b, c, h, w, o, k, input_grad) in shapes {
        let shape = (b, c, h, w, o, k);
        let conv = Conv2dConfig::new([c, o], [k, k]).with_padding(PaddingConfig2d::Same).init::<B>(&device);
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let x = Tensor::<B, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let x = if input_grad { x.require_grad() } else { x };
        let bias = conv.bias.as_ref().expect("bias").val();
        let ours = fused(x.clone(), conv.weight.val(), bias.clone());
        let reference = pool.forward(relu(conv.forward(x.clone())));
        assert_eq!(ours.dims(), reference.dims());
        let d = max_abs_diff(&values(ours.clone()), &values(reference.clone()));
        assert!(d < 1e-4, "forward {shape:?}: {d}");
        // A loss that weights every output differently, except windows whose two largest
        // sums (or whose maximum and zero) are within 1e-3: there either input is a right
        // winner, and which one wins is rounding (a Winograd forward differs from Burn's
        // direct convolution by about 1e-5).
        let mix = Tensor::<B, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        let clear = clear_windows(&values(conv.forward(x.clone())), [b, o, h, w]);
        let mix = mix * Tensor::from_data(TensorData::new(clear, ours.dims()), &device);
        let g1 = (ours * mix.clone()).sum().backward();
        let g2 = (reference * mix).sum().backward();
        let grad = |t: &Tensor<B, 4>, g: &B::Gradients| t.grad(g).map(values);
        if input_grad {
            let (a, r) = (grad(&x, &g1).expect("dx"), grad(&x, &g2).expect("dx"));
            let scale = r.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&a, &r);
            assert!(d <= 1e-4 * scale, "dx {shape:?}: {d} (scale {scale})");
        } else {
            assert!(grad(&x, &g1).is_none(), "an untracked input got a gradient");
        }
        let weight = conv.weight.val();
        let (a, r) = (grad(&weight, &g1).expect("dw"), grad(&weight, &g2).expect("dw"));
        let (ab, rb) = (values(bias.grad(&g1).expect("db")), values(bias.grad(&g2).expect("db")));
        for (name, a, r) in [("dw", a, r), ("db", ab, rb)] {
            let scale = r.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&a, &r);
            assert!(d <= 1e-4 * scale, "{name} {shape:?}: {d} (scale {scale})");
        }
    }
}
