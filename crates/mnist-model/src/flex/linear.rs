//! A fully connected layer, `y = x W + b`, for `Autodiff<Flex>` with its own weight
//! gradient.
//!
//! burn-flex allocates every matrix product's output zeroed and then copies it once more
//! to re-align it (`FlexTensor::empty`), on one thread; for fc1's weight gradient,
//! `[3136, 1024]` = 13 MB a step, that allocation, its page faults and the copy took about
//! a tenth of a training step. Here the forward pass, the input gradient (`g W^T`) and the
//! bias gradient stay Burn's operations on small outputs, and the weight gradient
//! `dW = x^T g` (an inner dimension of only the batch) is a register-tiled kernel writing
//! into a vector that becomes the gradient tensor without a copy: 5 rows x 16 columns of
//! `dW` in 10 vector registers, the batch as the inner loop.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::Flex;
use rayon::prelude::*;

use super::lanes::{Lanes, TILE_COLUMNS, TILE_ROWS, WithLanes, dispatch, tile_update};
use super::layout::zeroed;
use super::{Ad, cast, float, from_vec, spare, values};

/// Columns of `dW` per register tile.
const PANEL: usize = TILE_COLUMNS;
/// Rows of `dW` per register tile.
const MR: usize = TILE_ROWS;
/// Rows of `dW` per parallel task.
const TASK_ROWS: usize = 8 * MR;

/// `x [n, i] . weight [i, j] + bias [j]` when `B` is `Autodiff<Flex>` with f32 tensors;
/// otherwise hands `x` back untouched.
pub fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let [_, i] = x.dims();
    let [wi, j] = weight.dims();
    if wi != i || bias.dims() != [j] || [x.dtype(), weight.dtype(), bias.dtype()] != [DType::F32; 3] {
        return Err(x);
    }
    let x = cast::<Tensor<B, 2>, Tensor<Ad, 2>>(x)?;
    let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<Ad, 2>>(weight), cast::<_, Tensor<Ad, 1>>(bias)) else {
        unreachable!("x, weight and bias share the backend B");
    };
    Ok(cast(autodiff(x, weight, bias)).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex>")))
}

fn inner<const D: usize>(p: &FloatTensor<Flex>) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p.clone()))
}

fn autodiff(x: Tensor<Ad, 2>, weight: Tensor<Ad, 2>, bias: Tensor<Ad, 1>) -> Tensor<Ad, 2> {
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    let y = inner::<2>(&x.primitive).matmul(inner(&weight.primitive)) + inner::<1>(&bias.primitive).unsqueeze::<2>();
    let y = float(y);
    let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
    let y = match Linear.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[derive(Debug)]
struct Linear;

impl Backward<Flex, 3> for Linear {
    /// The input `x [n, i]` and the weight `[i, j]`.
    type State = (FloatTensor<Flex>, FloatTensor<Flex>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, weight) = ops.state;
        let g = inner::<2>(&grad);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, float(g.clone().matmul(inner::<2>(&weight).transpose())));
        }
        if let Some(node) = node_bias {
            let [_, j] = g.dims();
            grads.register::<Flex>(node.id, float(g.clone().sum_dim(0).reshape([j])));
        }
        if let Some(node) = node_weight {
            let ([n, i], [_, j]) = (inner::<2>(&x).dims(), g.dims());
            let (x, grad) = (values::<2>(&x), values::<2>(&grad));
            // Into a recycled buffer (see `recycle`) when there is one: every value is written.
            let dw = match spare(&[i, j]) {
                Some(mut dw) => {
                    weight_grad_into(n, i, j, &x, &grad, &mut dw.storage_mut::<f32>()[..i * j]);
                    dw
                }
                None => from_vec(weight_grad(n, i, j, &x, &grad), [i, j]),
            };
            grads.register::<Flex>(node.id, dw);
        }
    }
}

/// `x^T g`: `x [n, i]`, `g [n, j]` -> `[i, j]`.
pub(crate) fn weight_grad(n: usize, i: usize, j: usize, x: &[f32], g: &[f32]) -> Vec<f32> {
    let mut dw = zeroed(i * j);
    weight_grad_into(n, i, j, x, g, &mut dw);
    dw
}

/// `x^T g` written over `dw: [i, j]` (every value).
fn weight_grad_into(n: usize, i: usize, j: usize, x: &[f32], g: &[f32], dw: &mut [f32]) {
    // x transposed, `[i, n]`, so that a tile's rows are contiguous runs of the batch.
    let mut xt = vec![0.0f32; i * n];
    xt.par_chunks_mut(n * TASK_ROWS).enumerate().for_each(|(task, rows)| {
        for (r, row) in rows.chunks_mut(n).enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = x[b * i + task * TASK_ROWS + r];
            }
        }
    });
    // g in panels of 16 columns, `[panel][n][16]`, zero past the last column.
    let panels = j.div_ceil(PANEL);
    let mut packed = vec![0.0f32; panels * n * PANEL];
    for (b, row) in g.chunks_exact(j).enumerate() {
        for (col, &v) in row.iter().enumerate() {
            packed[((col / PANEL) * n + b) * PANEL + col % PANEL] = v;
        }
    }
    if n == 0 || j == 0 {
        dw.fill(0.0);
        return;
    }
    dw.par_chunks_mut(TASK_ROWS * j).enumerate().for_each(|(task, out)| {
        let rows = out.len() / j;
        dispatch(Rows { n, j, xt: &xt[task * TASK_ROWS * n..][..rows * n], packed: &packed, out });
    });
}

/// Some rows of `x^T g`.
struct Rows<'a> {
    n: usize,
    j: usize,
    /// Their rows of `x^T`, `[rows, n]`.
    xt: &'a [f32],
    /// `g` in panels, `[panel][n][16]`.
    packed: &'a [f32],
    /// `[rows, j]`.
    out: &'a mut [f32],
}

impl WithLanes for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let (n, j) = (self.n, self.j);
        let rows = self.out.len() / j;
        let (packed, _) = self.packed.as_chunks::<PANEL>();
        for first in (0..rows).step_by(MR) {
            // The last tile repeats the last row where it runs past it.
            let xr: [&[f32]; MR] = std::array::from_fn(|r| &self.xt[(first + r).min(rows - 1) * n..][..n]);
            for (panel, g) in packed.chunks_exact(n).enumerate() {
                // `MR x 16` sums over the batch: `sum over b of xr[r][b] * g[b][c]`.
                let mut sums = [[lanes.zero(); 2]; MR];
                tile_update(lanes, &mut sums, xr, g);
                let columns = PANEL.min(j - panel * PANEL);
                for (r, sum) in sums.iter().enumerate().take(rows - first) {
                    let sum = [lanes.store(sum[0]), lanes.store(sum[1])];
                    let row = &mut self.out[(first + r) * j + panel * PANEL..][..columns];
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = sum[c / 8][c % 8];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::super::recycle;
    use super::*;

    /// A buffer handed back with [`recycle`] becomes the next weight gradient of its shape,
    /// every stale value overwritten; small or shared buffers are not kept.
    #[test]
    fn a_recycled_buffer_is_overwritten_by_the_weight_gradient() {
        // 512 x 520 floats: just over 1 MiB.
        let (n, i, j) = (3, 512, 520);
        recycle(from_vec(vec![f32::NAN; i * j], [i, j]));
        let kept = spare(&[i, j]).expect("a dense, unique 1 MiB buffer is kept");
        recycle(kept);
        recycle(from_vec(vec![0.0; 16], [4, 4]));
        assert!(spare(&[4, 4]).is_none(), "a small buffer is not kept");
        let shared = from_vec(vec![0.0; i * j], [j, i]);
        recycle(shared.clone());
        assert!(spare(&[j, i]).is_none(), "a shared buffer is not kept");

        let device = Default::default();
        let xs: Vec<f32> = (0..n * i).map(|v| ((v * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let gs: Vec<f32> = (0..n * j).map(|v| ((v * 53 % 97) as f32 - 48.0) / 30.0).collect();
        let x = Tensor::<Ad, 2>::from_data(TensorData::new(xs.clone(), [n, i]), &device);
        let weight = Tensor::<Ad, 2>::zeros([i, j], &device).require_grad();
        let bias = Tensor::<Ad, 1>::zeros([j], &device).require_grad();
        let y = linear(x, weight.clone(), bias).unwrap_or_else(|_| panic!("flex linear"));
        let mix = Tensor::<Ad, 2>::from_data(TensorData::new(gs.clone(), [n, j]), &device);
        let grads = (y * mix).sum().backward();
        let dw = weight.grad(&grads).expect("dw").into_data().to_vec::<f32>().expect("f32");
        assert!(spare(&[i, j]).is_none(), "the recycled buffer was taken");
        let expect = weight_grad(n, i, j, &xs, &gs);
        assert!(dw.iter().zip(&expect).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())));
    }

    #[test]
    fn weight_grad_is_x_transposed_times_g() {
        // Shapes with remainders: rows not a multiple of 5 or of a task, columns not of 16.
        for (n, i, j) in [(3, 7, 10), (50, 83, 33), (1, 1, 1), (4, 41, 16)] {
            let x: Vec<f32> = (0..n * i).map(|v| ((v * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let g: Vec<f32> = (0..n * j).map(|v| ((v * 53 % 97) as f32 - 48.0) / 30.0).collect();
            let dw = weight_grad(n, i, j, &x, &g);
            for r in 0..i {
                for c in 0..j {
                    let expect: f32 = (0..n).map(|b| x[b * i + r] * g[b * j + c]).sum();
                    let got = dw[r * j + c];
                    assert!((got - expect).abs() <= 1e-4 * (1.0 + expect.abs()), "{:?} [{r},{c}]: {got} vs {expect}", (n, i, j));
                }
            }
        }
    }
}
