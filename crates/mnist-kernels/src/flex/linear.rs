//! A fully connected layer, `y = x W + b`, for `Autodiff<Flex>` with its own kernels for
//! the three matrix products (fc1's weight `[3136, 1024]` is 13 MB, and a training step
//! reads it twice and writes its gradient once, so each product is shaped around reading
//! or writing it in long contiguous runs).
//!
//! - forward `x W`, up to [`SMALL_BATCH`] images: tasks over ranges of the weight's rows,
//!   each copying 64 rows at a time (256 KB, contiguous) into panels of 16 columns and
//!   running the images over each 4 KB panel in the register tile; the tasks' partial sums
//!   are added at the end (reading a panel's columns in place, 64 bytes from each 4 KB
//!   row, ran at half speed). With AVX-512 and a width of whole 64-column groups (fc1's
//!   1024) a 4 x 64 tile runs over blocks of 128 rows x 64 columns, each copied (256
//!   bytes of each row) into 32 KB that stay in L1 while the images pass. Above it
//!   (evaluation, training at 512) a blocked product:
//!   the weight packed once into panels of 512 rows, each task a range of images carrying
//!   its sums in the output from one block to the next. burn-flex's matrix product does
//!   that too, but with AVX2's eight-lane tiles where this crate's take AVX-512's 16;
//! - input gradient `g W^T`: each value a dot product of a row of `g` with a row of `W`,
//!   both contiguous, so the weight is read where it lies;
//! - weight gradient `x^T g` (an inner dimension of only the batch): 5 x 16 register
//!   tiles writing into a vector that becomes the gradient tensor without a copy, the
//!   buffer of the previous step's gradient when the optimizer handed it back. burn-flex
//!   allocates every product's output zeroed and copies it once more to re-align it
//!   (`FlexTensor::empty`), on one thread: for this 13 MB output about a tenth of a step.
//!
//! The small-batch forward pass and the input gradient keep a block of images in cache
//! while the weight streams past, which suits small batches (the seed's 50); above 64
//! images the dense input gradient is burn-flex's matrix product. The bias gradient stays
//! Burn's operation.
//!
//! When at most [`SPARSE_DENSITY`] of the output gradient is non-zero (in training, dropout
//! and ReLU leave about a quarter of fc1's), both gradients come instead from its non-zero
//! entries alone, at any batch ([`super::sparse`]).
//!
//! Every kernel takes the weight stored by rows (Burn's `[i, j]`) or by columns (its
//! buffer the transpose `[j, i]`, [`Weight`]), and gives the weight gradient stored as
//! the weight is. Training at up to 64 images with AVX-512 stores fc1's weight by
//! columns ([`training_layout`]): the sparse backward pass then reads the weight and
//! writes its gradient where they lie, without the transposes of 64-row blocks that were
//! a ninth of a step, and the forward pass runs the images in the lanes
//! ([`images_in_lanes`]), reading each stored row front to back. With the weight by
//! columns, the dense input gradient is the forward pass's product of `g` with the stored
//! `[j, i]`, and the dense weight gradient the weight-gradient kernel with `x` and `g`
//! swapped (`g^T x`).

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::Flex;
use rayon::prelude::*;

use super::lanes::{Lanes, MAX_TILE_ROWS, TILE_COLUMNS, WithLanes, chosen, dispatch, runs, starts, sum8};
use super::layout::{CacheAligned, zeroed};
use super::wide::Zmm;
use super::sparse::{self, Entries, SPARSE_DENSITY, transpose_into};
use crate::Simd;
use super::pool::{recycle, shelve, spare, spare_or_zeroed};
use super::{Ad, Refused, cast, float, from_vec, is_dense_by_columns, transposed, values};

/// Columns of `dW` per register tile.
const PANEL: usize = TILE_COLUMNS;
/// Rows of the register tiles, at the most ([`Lanes::TILE`]: 5, or 10 with AVX-512).
const MR: usize = MAX_TILE_ROWS;
/// Rows of `dW` per parallel task (a whole number of tiles of every instruction set).
const TASK_ROWS: usize = 4 * MR;

/// `x [n, i] . weight [i, j] + bias [j]` when `B` is `Autodiff<Flex>` or burn-flex without
/// autodiff, with f32 tensors; otherwise hands the three tensors back untouched (moved, as [`super::conv_relu_pool`] does).
pub(crate) fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Result<Tensor<B, 2>, Refused<B, 2>> {
    let [n, i] = x.dims();
    let [wi, j] = weight.dims();
    if wi != i || bias.dims() != [j] || [x.dtype(), weight.dtype(), bias.dtype()] != [DType::F32; 3] {
        return Err((x, weight, bias));
    }
    let x = match cast::<Tensor<B, 2>, Tensor<Ad, 2>>(x) {
        Ok(x) => {
            let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<Ad, 2>>(weight), cast::<_, Tensor<Ad, 1>>(bias)) else {
                unreachable!("x, weight and bias share the backend B");
            };
            return Ok(cast(autodiff(x, weight, bias)).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex>")));
        }
        Err(x) => x,
    };
    // Inference: one image's prediction reads all of fc1's weight, on every core here.
    let x = match cast::<Tensor<B, 2>, Tensor<Flex, 2>>(x) {
        Ok(x) => x,
        Err(x) => return Err((x, weight, bias)),
    };
    let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<Flex, 2>>(weight), cast::<_, Tensor<Flex, 1>>(bias)) else {
        unreachable!("x, weight and bias share the backend B");
    };
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    let stored = Stored::of(&weight);
    let y = forward(n, i, j, &values::<2>(&x), stored.weight(), &values::<1>(&bias));
    let y = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(from_vec(y, [n, j])));
    Ok(cast(y).unwrap_or_else(|_| unreachable!("B is Flex")))
}

/// A weight `[i, j]` as the kernels read it: stored row by row (its buffer `[i, j]`
/// dense, Burn's `Linear` layout), or column by column (its buffer is its transpose
/// `[j, i]` dense, PyTorch's layout: [`super::by_columns`], which training on burn-flex
/// gives fc1's weight, see [`crate::fully_connected_training_layout`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Weight<'a> {
    Rows(&'a [f32]),
    Columns(&'a [f32]),
}

/// A weight tensor's values: its own buffer when it is stored densely by rows or by
/// columns, else a copy by rows.
struct Stored<'a> {
    values: Cow<'a, [f32]>,
    by_columns: bool,
}

impl<'a> Stored<'a> {
    fn of(t: &'a FloatTensor<Flex>) -> Self {
        if is_dense_by_columns(t) {
            Stored { values: Cow::Borrowed(&t.storage::<f32>()[..t.layout().num_elements()]), by_columns: true }
        } else {
            Stored { values: values::<2>(t), by_columns: false }
        }
    }

    fn weight(&self) -> Weight<'_> {
        if self.by_columns { Weight::Columns(&self.values) } else { Weight::Rows(&self.values) }
    }
}

/// The smallest rows and columns of a weight [`training_layout`] stores by columns: a
/// narrower one (fc2's `[1024, 10]`) has little to gain.
const COLUMNS_FROM: usize = 64;

/// `weight` stored by columns ([`Weight::Columns`]) when `B` is `Autodiff<Flex>` or
/// burn-flex, the weight is f32 and at least [`COLUMNS_FROM`] x [`COLUMNS_FROM`]; else
/// itself. An autodiff weight stays a leaf, tracked if it was. (The caller,
/// [`crate::fully_connected_training_layout`], asks for it with AVX-512 at up to 64
/// images only: with AVX2 the forward pass has no images-in-lanes kernel, and at 512
/// images the in-place sparse products ran slower than the transposing ones, 0.93-0.99x.)
pub(crate) fn training_layout<B: Backend>(weight: Tensor<B, 2>) -> Tensor<B, 2> {
    let [i, j] = weight.dims();
    if i < COLUMNS_FROM || j < COLUMNS_FROM || weight.dtype() != DType::F32 {
        return weight;
    }
    let columns = |w: Tensor<Flex, 2>| Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(super::by_columns(float(w))));
    match cast::<Tensor<B, 2>, Tensor<Ad, 2>>(weight) {
        Ok(w) => {
            let tracked = w.is_require_grad();
            let w = Tensor::<Ad, 2>::from_inner(columns(w.inner()));
            cast(if tracked { w.require_grad() } else { w }).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex>"))
        }
        Err(w) => match cast::<Tensor<B, 2>, Tensor<Flex, 2>>(w) {
            Ok(w) => cast(columns(w)).unwrap_or_else(|_| unreachable!("B is Flex")),
            Err(w) => w,
        },
    }
}

fn inner<const D: usize>(p: &FloatTensor<Flex>) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p.clone()))
}

fn autodiff(x: Tensor<Ad, 2>, weight: Tensor<Ad, 2>, bias: Tensor<Ad, 1>) -> Tensor<Ad, 2> {
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    let ([n, i], [_, j]) = (inner::<2>(&x.primitive).dims(), inner::<2>(&weight.primitive).dims());
    let y = from_vec(forward(n, i, j, &values::<2>(&x.primitive), Stored::of(&weight.primitive).weight(), &values::<1>(&bias.primitive)), [n, j]);
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
        let [n, j] = g.dims();
        // In training about three quarters of fc1's output gradient is zero (dropout and
        // ReLU): then both products visit the non-zero entries only (`sparse`).
        let entries = (node_x.is_some() || node_weight.is_some()).then(|| Entries::of(n, j, &values::<2>(&grad), SPARSE_DENSITY)).flatten();
        let [i, _] = inner::<2>(&weight).dims();
        let stored = Stored::of(&weight);
        if let Some(node) = node_x {
            let dx = match (&entries, stored.weight()) {
                (Some(entries), weight) => {
                    // Into a recycled buffer when one is kept (see `recycle`): every value is
                    // written.
                    let mut dx = spare_or_zeroed([n, i]);
                    sparse::input_grad_into(i, entries, weight, &mut dx.storage_mut::<f32>()[..n * i]);
                    dx
                }
                (None, Weight::Rows(weight)) if n <= SMALL_BATCH => from_vec(input_grad(n, i, j, &values::<2>(&grad), weight), [n, i]),
                (None, Weight::Rows(_)) => float(g.clone().matmul(inner::<2>(&weight).transpose())),
                // `g W^T` is `g` times the stored `[j, i]`: the forward pass's product.
                (None, Weight::Columns(weight_t)) => from_vec(forward(n, j, i, &values::<2>(&grad), Weight::Rows(weight_t), &vec![0.0; i]), [n, i]),
            };
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, float(g.clone().sum_dim(0).reshape([j])));
        }
        if let Some(node) = node_weight {
            let (x, grad) = (values::<2>(&x), values::<2>(&grad));
            // By columns, the gradient is written as its transpose `[j, i]`, `g^T x`, and
            // registered as the transposed view: stored as the weight is.
            let by_columns = stored.by_columns;
            let into = |dw: &mut [f32]| match (&entries, by_columns) {
                (Some(entries), false) => sparse::weight_grad_into(i, &x, entries, dw),
                (Some(entries), true) => sparse::weight_grad_by_columns_into(i, &x, entries, dw),
                (None, false) => weight_grad_into(n, i, j, &x, &grad, dw),
                (None, true) => weight_grad_into(n, j, i, &grad, &x, dw),
            };
            let shape = if by_columns { [j, i] } else { [i, j] };
            // Into a recycled buffer (see `recycle`) when there is one: every value is written.
            let dw = match spare(shape) {
                Some(mut dw) => {
                    into(&mut dw.storage_mut::<f32>()[..i * j]);
                    dw
                }
                None => {
                    let mut dw = zeroed(i * j);
                    into(&mut dw);
                    from_vec(dw, shape)
                }
            };
            grads.register::<Flex>(node.id, if by_columns { transposed(dw) } else { dw });
        }
        // The input's last read (at 512, conv2's output, 6 MB), unless something else holds
        // it.
        recycle(x);
    }
}

// `SMALL_BATCH` (64): the largest batch for which the forward pass keeps a block of
// images' running sums in cache while the weight streams past (`Depth`), and the dense
// input gradient is `input_grad`, which suits the seed's batch of 50; for larger batches
// those blocks outgrow the caches: the forward pass is `blocked`, the dense input gradient
// burn-flex's matrix product.
use crate::SMALL_BATCH;

/// Weight rows [`forward`] packs at a time: 64 rows of fc1's weight are 256 KB, contiguous,
/// and one panel of them (64 rows x 16 columns) 4 KB.
const FORWARD_DEPTH: usize = 64;

/// `x W + b`: `x [n, i]`, `weight [i, j]`, `bias [j]` -> `[n, j]`. Up to 4 images stream the
/// weight ([`stream`]), above [`SMALL_BATCH`] the product is [`blocked`]; between them each task sums a range
/// of the weight's rows into its own `[n, j]` partial sums, 64 rows at a time: it copies
/// those rows (contiguous in memory, so read at full speed) into panels of 16 columns, then
/// runs every block of 5 images over each 4 KB panel in the 5 x 16 register tile. The
/// partial sums of the tasks (two per thread) are added at the end. A matrix product
/// routine packs all 13 MB of fc1's weight first; reading the panels' columns in place
/// instead, 64 bytes from each 4 KB row, ran at half speed.
///
/// A weight stored by columns: with AVX-512, up to [`SMALL_BATCH`] images run in the
/// lanes ([`images_in_lanes`]); otherwise it is packed the same way, each panel
/// transposed from 16 of its stored rows ([`Pack`]), and a few images take the packed
/// path too (streaming reads the weight's rows).
pub(crate) fn forward(n: usize, i: usize, j: usize, x: &[f32], weight: Weight<'_>, bias: &[f32]) -> Vec<f32> {
    if n == 0 || j == 0 {
        return Vec::new();
    }
    if let (true, Weight::Rows(weight)) = (n <= STREAM_IMAGES, weight) {
        return stream(n, i, j, x, weight, bias);
    }
    if let (Weight::Columns(weight_t), Simd::Avx512, true) = (weight, chosen(), n <= SMALL_BATCH) {
        return images_in_lanes(n, i, j, x, weight_t, bias);
    }
    if n > SMALL_BATCH {
        return blocked(n, i, j, x, weight, bias);
    }
    let width = j.div_ceil(PANEL) * PANEL;
    // Four tasks per thread, each a near-equal share of the 64-row chunks (with two per
    // thread of up to 13 chunks each, fc1's 49 split 13 + 13 against 13 + 10, and one core
    // waited for the other for a sixth of the product).
    let chunks = i.div_ceil(FORWARD_DEPTH);
    let tasks = (4 * rayon::current_num_threads()).min(chunks).max(1);
    // Split down to single tasks whatever the stealing: the sums are added in one order.
    let sums = (0..tasks)
        .into_par_iter()
        .with_max_len(1)
        .map(|task| {
            let (start, end) = ((task * chunks / tasks) * FORWARD_DEPTH, ((task + 1) * chunks / tasks * FORWARD_DEPTH).min(i));
            dispatch(Depth { n, i, j, start, end, x, weight })
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; n * width]);
    let mut y = Vec::with_capacity(n * j);
    for row in sums.chunks_exact(width).take(n) {
        y.extend(row.iter().zip(bias).map(|(s, b)| s + b));
    }
    y
}

/// Images left over past the last whole group of 16 that [`images_in_lanes`] takes as
/// dot products (the seed's 50 leaves 2); more are a group of 16 padded with zeros.
const DOT_IMAGES_AT_MOST: usize = 4;

/// `x W + b` for a weight stored by columns (`weight_t [j, i]`, its transpose), with
/// AVX-512, the images in the lanes: `x` is transposed once into groups of 16 images,
/// `[group][k][16]`, and each task takes a range of tiles of 8 outputs, each tile 8 of
/// the stored rows read in place, front to back, while the groups pass two at a time
/// ([`Zmm::lanes_pair8`]: two loads, eight broadcasts and sixteen multiply-adds a step).
/// Nothing of the weight is copied or transposed: packing panels of 16 outputs from the
/// stored rows transposes all of it on every pass (training at 50 then ran at 0.88-1.03x
/// the weight stored by rows). Up to [`DOT_IMAGES_AT_MOST`] images past the last whole
/// group are dot products of their rows with the tile's ([`Zmm::dots4x4`]); more are a
/// group padded with zeros.
fn images_in_lanes(n: usize, i: usize, j: usize, x: &[f32], weight_t: &[f32], bias: &[f32]) -> Vec<f32> {
    let (whole, rest) = (n / 16, n % 16);
    let padded = rest > DOT_IMAGES_AT_MOST;
    let groups = whole + usize::from(padded);
    let mut xt = CacheAligned::filled(groups * i, [0.0f32; 16]);
    if i > 0 {
        // A group's `[i][16]` is one panel of `x` read as a weight stored by columns (its
        // `n` images the stored rows), as `Pack` packs one.
        xt.par_chunks_mut(i).enumerate().for_each(|(group, packed)| {
            let images = 16.min(n - group * 16);
            dispatch(Pack { weight: Weight::Columns(&x[group * 16 * i..][..images * i]), j: images, start: 0, depth: i, stride: i, packed });
        });
    }
    let tiles = j.div_ceil(8);
    let tasks = (4 * rayon::current_num_threads()).min(tiles).max(1);
    let per_task = tiles.div_ceil(tasks);
    // `[output][n]`, 8 outputs a tile.
    let mut yt = vec![0.0f32; tiles * 8 * n];
    yt.par_chunks_mut(per_task * 8 * n).enumerate().for_each(|(task, out)| {
        dispatch(LanesTiles { i, j, n, weight_t, x, xt: &xt, groups, dots: if padded { 0 } else { rest }, first: task * per_task, out });
    });
    let mut y = Vec::with_capacity(n * j);
    for b in 0..n {
        y.extend((0..j).map(|c| yt[c * n + b] + bias[c]));
    }
    y
}

/// Some tiles of [`images_in_lanes`].
struct LanesTiles<'a> {
    i: usize,
    j: usize,
    n: usize,
    /// `[j, i]`.
    weight_t: &'a [f32],
    /// `[n, i]`.
    x: &'a [f32],
    /// `[group][i][16]`.
    xt: &'a [[f32; 16]],
    groups: usize,
    /// Images after the groups' taken as dot products (at most [`DOT_IMAGES_AT_MOST`]).
    dots: usize,
    /// The first tile.
    first: usize,
    /// `[tile][8][n]`: the tiles' outputs, by output.
    out: &'a mut [f32],
}

impl WithLanes for LanesTiles<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let Some(zmm) = lanes.zmm() else {
            unreachable!("images_in_lanes runs with AVX-512 only");
        };
        let (i, j, n) = (self.i, self.j, self.n);
        let group = |g: usize| &self.xt[g * i..][..i];
        for (t, out) in self.out.chunks_exact_mut(8 * n).enumerate() {
            let tile = self.first + t;
            // The last tile repeats the last output where it runs past it.
            let mut rows: [&[f32]; 8] = [&[]; 8];
            for (r, row) in rows.iter_mut().enumerate() {
                *row = &self.weight_t[(tile * 8 + r).min(j - 1) * i..][..i];
            }
            let mut put = |g: usize, acc: &[[f32; 16]; 8]| {
                let images = 16.min(n - g * 16);
                for (r, acc) in acc.iter().enumerate() {
                    out[r * n + g * 16..][..images].copy_from_slice(&acc[..images]);
                }
            };
            let pairs = self.groups / 2 * 2;
            for g in (0..pairs).step_by(2) {
                let mut acc = [[[0.0f32; 16]; 8]; 2];
                zmm.lanes_pair8(&mut acc, rows, [group(g), group(g + 1)]);
                put(g, &acc[0]);
                put(g + 1, &acc[1]);
            }
            if pairs < self.groups {
                let mut acc = [[0.0f32; 16]; 8];
                zmm.lanes_one8(&mut acc, rows, group(pairs));
                put(pairs, &acc);
            }
            if self.dots > 0 {
                let first = self.groups * 16;
                // The last image repeated where four run past it.
                let images = [0, 1, 2, 3].map(|q| &self.x[(first + q.min(self.dots - 1)) * i..][..i]);
                for half in 0..2 {
                    let w = [rows[4 * half], rows[4 * half + 1], rows[4 * half + 2], rows[4 * half + 3]];
                    let sums = zmm.dots4x4(images, w);
                    for (q, sums) in sums.iter().enumerate().take(self.dots) {
                        for (c, &v) in sums.iter().enumerate() {
                            out[(4 * half + c) * n + first + q] = v;
                        }
                    }
                }
            }
        }
    }
}

/// Weight rows per packed block of [`blocked`]: a panel of 512 rows is 32 KB, which stays
/// in L1 while every tile of the task's images passes over it (measured against 256 rows:
/// 1.03x on evaluation's batches of 500, AVX-512).
const BLOCK_DEPTH: usize = 512;

/// `x W + b` for many images (above [`SMALL_BATCH`]: evaluation's batches, training at
/// 512), a blocked matrix product after Goto and van de Geijn ("Anatomy of high-performance
/// matrix multiplication", ACM TOMS 34(3), 2008): the weight is packed once, in parallel,
/// into blocks of [`BLOCK_DEPTH`] rows, each as panels of 16 columns `[block][panel][row][16]`
/// (each block is a contiguous run of the weight's rows, read in order); then each task, a
/// range of images, runs every panel of a block over its images in the register tile,
/// with the sums carried in the output between blocks (started from the bias). A task's
/// images' slice of a block (a few hundred KB) stays in L2 across the panels. With AVX-512,
/// whole panels go four at a time through a 4 x 64 tile ([`super::wide::Zmm::tile_sums4x64`]: each
/// step's 4 loads and 4 broadcasts feed 16 multiply-adds, against 11 loads for 10 in the
/// 10 x 16 tile; evaluation 1.03-1.09x, training at 512 1.04x, side by side on Zen 5).
/// burn-flex's matrix product (the `gemm` crate) does the same with AVX2's eight-lane tiles
/// only.
fn blocked(n: usize, i: usize, j: usize, x: &[f32], weight: Weight<'_>, bias: &[f32]) -> Vec<f32> {
    let panels = j.div_ceil(PANEL);
    let blocks = i.div_ceil(BLOCK_DEPTH);
    if blocks == 0 {
        return bias.repeat(n);
    }
    let block_len = panels * BLOCK_DEPTH;
    // A buffer an earlier call packed for this shape: `Pack` writes the same places on
    // every call, and the ones it leaves (past the last row and column) are still zero.
    // Else one cleared on all cores (13 MB for fc1), as the kernels' other large buffers
    // are: allocated and cleared on every call, it was a hundredth of a training step at
    // 512.
    let kept = take_packed(&mut KEPT_PACKED.lock().unwrap_or_else(PoisonError::into_inner), (i, j));
    let mut packed = kept.unwrap_or_else(|| CacheAligned::filled(blocks * block_len, [0.0f32; PANEL]));
    packed.par_chunks_mut(block_len).enumerate().for_each(|(block, packed)| {
        let start = block * BLOCK_DEPTH;
        dispatch(Pack { weight, j, start, depth: BLOCK_DEPTH.min(i - start), stride: BLOCK_DEPTH, packed });
    });
    // Every value is written: the first block starts from the bias.
    let mut y = zeroed(n * j);
    // Two tasks per thread, a whole number of tiles each: every task reads all of the
    // packed weight, so fewer tasks read less; two let a core that finishes early help.
    let tasks = (2 * rayon::current_num_threads()).min(n.div_ceil(MR)).max(1);
    let task_rows = n.div_ceil(tasks).div_ceil(MR) * MR;
    y.par_chunks_mut(task_rows * j).enumerate().for_each(|(task, y)| {
        let rows = y.len() / j;
        dispatch(Blocked { i, j, x: &x[task * task_rows * i..][..rows * i], packed: &packed, bias, y });
    });
    keep_packed(&mut KEPT_PACKED.lock().unwrap_or_else(PoisonError::into_inner), ((i, j), packed));
    y
}

/// The packed weight kept for shape `(i, j)`, taken out of `kept`.
fn take_packed(kept: &mut Vec<Packed>, shape: (usize, usize)) -> Option<CacheAligned<[f32; PANEL]>> {
    kept.iter().position(|kept| kept.0 == shape).map(|at| kept.remove(at).1)
}

/// Keeps `packed` in `kept`: in place of one of its shape (calls that overlap, in the
/// server, pack their own, and the last to end is kept), else of the oldest when
/// [`KEPT_PACKED_SHAPES`] are kept.
fn keep_packed(kept: &mut Vec<Packed>, packed: Packed) {
    kept.retain(|kept| kept.0 != packed.0);
    shelve(kept, packed, KEPT_PACKED_SHAPES);
}

/// The packed weights of [`blocked`]'s last calls, each with the shape `(i, j)` it was
/// packed for, up to [`KEPT_PACKED_SHAPES`]. One was too few: fc2 follows fc1 in every
/// forward pass at 512, so fc1's 13 MB was packed into a new buffer on every step.
static KEPT_PACKED: Mutex<Vec<Packed>> = Mutex::new(Vec::new());

/// How many packed weights [`KEPT_PACKED`] keeps (the seed's fc1 and fc2, and room).
const KEPT_PACKED_SHAPES: usize = 4;

/// A packed weight and the shape `(i, j)` of the weight it was packed from.
type Packed = ((usize, usize), CacheAligned<[f32; PANEL]>);

/// Rows `start..start + depth` of a weight `[i, j]` into panels of 16 columns, `packed
/// [panel][stride][16]` (row `d` of panel `p` at `p * stride + d`; columns past the last
/// left as they are). Stored by rows, row by row ([`pack_row`]); by columns, each panel
/// is 16 of the stored rows (`depth` contiguous values each), transposed 16 x 16 at a time.
struct Pack<'a, 'b> {
    weight: Weight<'a>,
    j: usize,
    start: usize,
    depth: usize,
    stride: usize,
    packed: &'b mut [[f32; PANEL]],
}

impl WithLanes for Pack<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let Pack { weight, j, start, depth, stride, packed } = self;
        match weight {
            Weight::Rows(weight) => {
                for (d, row) in weight[start * j..][..depth * j].chunks_exact(j).enumerate() {
                    pack_row(row, d, stride, packed);
                }
            }
            Weight::Columns(weight_t) => {
                let i = weight_t.len() / j;
                for (p, panel) in packed.chunks_mut(stride).enumerate().take(j.div_ceil(PANEL)) {
                    let columns = PANEL.min(j - p * PANEL);
                    transpose_into(lanes, &weight_t[p * PANEL * i + start..], i, (columns, depth), panel[..depth].as_flattened_mut(), PANEL, false);
                }
            }
        }
    }
}

/// Row `d` of a chunk of the weight's rows into panels of 16 columns, `packed
/// [panel][depth][16]` (columns past the row's end left as they are): whole panels as one
/// 64-byte array each (one register's load and store; a slice's `copy_from_slice` called
/// `memcpy` for every 64 bytes, a quarter of the small-batch kernel's time), then the last
/// columns.
#[inline(always)]
fn pack_row(row: &[f32], d: usize, depth: usize, packed: &mut [[f32; PANEL]]) {
    let (full, rest) = row.as_chunks::<PANEL>();
    for (p, columns) in full.iter().enumerate() {
        packed[p * depth + d] = *columns;
    }
    if !rest.is_empty() {
        packed[full.len() * depth + d][..rest.len()].copy_from_slice(rest);
    }
}

/// Some images' rows of [`blocked`]'s product.
struct Blocked<'a> {
    i: usize,
    j: usize,
    /// The images, `[rows, i]`.
    x: &'a [f32],
    /// The packed weight, `[block][panel][BLOCK_DEPTH][16]`, zero past the last column.
    packed: &'a [[f32; PANEL]],
    bias: &'a [f32],
    /// Their outputs, `[rows, j]`.
    y: &'a mut [f32],
}

impl WithLanes for Blocked<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let (i, j) = (self.i, self.j);
        let rows = self.y.len() / j;
        let panels = j.div_ceil(PANEL);
        // Whole panels four at a time in the 4 x 64 tile where the CPU has it (AVX-512).
        let zmm = lanes.zmm();
        let grouped = if zmm.is_some() { j / PANEL / 4 * 4 } else { 0 };
        for (block, packed) in self.packed.chunks_exact(panels * BLOCK_DEPTH).enumerate() {
            let start = block * BLOCK_DEPTH;
            let depth = BLOCK_DEPTH.min(i - start);
            if let Some(zmm) = zmm {
                for p in (0..grouped).step_by(4) {
                    let panel = |q: usize| &packed[(p + q) * BLOCK_DEPTH..][..depth];
                    let four = [panel(0), panel(1), panel(2), panel(3)];
                    for top in (0..rows).step_by(4) {
                        // The last tile repeats the last image where it runs past it.
                        let xr = runs(self.x, starts::<4>(top, rows - 1, i), start, depth);
                        let mut acc = [[[0.0f32; PANEL]; 4]; 4];
                        let taken = (rows - top).min(4);
                        for (r, acc) in acc.iter_mut().enumerate().take(taken) {
                            let from = if block == 0 { &self.bias[p * PANEL..][..4 * PANEL] } else { &self.y[(top + r) * j + p * PANEL..][..4 * PANEL] };
                            let (from, _) = from.as_chunks::<PANEL>();
                            acc.copy_from_slice(&from[..4]);
                        }
                        zmm.tile_sums4x64(&mut acc, xr, four);
                        for (r, acc) in acc.iter().enumerate().take(taken) {
                            self.y[(top + r) * j + p * PANEL..][..4 * PANEL].copy_from_slice(acc.as_flattened());
                        }
                    }
                }
            }
            for (p, panel) in packed.chunks_exact(BLOCK_DEPTH).enumerate().skip(grouped) {
                let panel = &panel[..depth];
                let columns = PANEL.min(j - p * PANEL);
                for top in (0..rows).step_by(L::TILE) {
                    // The last tile repeats the last image where it runs past it.
                    let xr = runs(self.x, starts::<MR>(top, rows - 1, i), start, depth);
                    let mut acc = [[[0.0f32; 8]; 2]; MR];
                    let taken = (rows - top).min(L::TILE);
                    for (r, acc) in acc.iter_mut().enumerate().take(taken) {
                        let from = if block == 0 { &self.bias[p * PANEL..][..columns] } else { &self.y[(top + r) * j + p * PANEL..][..columns] };
                        if let Ok(from) = <&[f32; PANEL]>::try_from(from) {
                            let (halves, _) = from.as_chunks::<8>();
                            *acc = [halves[0], halves[1]];
                        } else {
                            for (c, &v) in from.iter().enumerate() {
                                acc[c / 8][c % 8] = v;
                            }
                        }
                    }
                    lanes.tile_sums(&mut acc, xr, panel);
                    for (r, acc) in acc.iter().enumerate().take(taken) {
                        put_columns(&mut self.y[(top + r) * j + p * PANEL..][..columns], acc);
                    }
                }
            }
        }
    }
}

/// The most images [`forward`] multiplies by streaming the weight's rows in place
/// ([`stream`]) rather than packing them into panels: packing pays when a block of five
/// images reuses each panel, and for one image (a single prediction) it was half the time
/// of the whole network.
const STREAM_IMAGES: usize = 4;

/// Weight rows a task of [`stream`] takes at the least.
const STREAM_TASK_ROWS: usize = 256;

/// `x W + b` for at most [`STREAM_IMAGES`] images, reading the weight once where it lies:
/// each task takes a contiguous range of the weight's rows (one per thread; fc1's 13 MB
/// streams through memory at full speed) and adds `x[b][r] * W[r, :]` into each image's
/// running sums (`j` floats, 4 KB for fc1, which stay in L1), skipping the rows whose
/// inputs are all zero: after ReLU and max-pooling about half of fc1's inputs are, so
/// half its weight is never read. The tasks' partial sums are added at the end.
fn stream(n: usize, i: usize, j: usize, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let width = j.div_ceil(8) * 8;
    let tasks = rayon::current_num_threads().min(i.div_ceil(STREAM_TASK_ROWS)).max(1);
    let per_task = i.div_ceil(tasks);
    let rows = |task: usize| {
        let start = (task * per_task).min(i);
        dispatch(Stream { n, i, j, start, end: (start + per_task).min(i), x, weight })
    };
    let sums = match tasks {
        1 => rows(0),
        // Split down to single tasks whatever the stealing: the sums are added in one order.
        _ => (0..tasks)
            .into_par_iter()
            .with_max_len(1)
            .map(rows)
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            })
            .unwrap_or_else(|| vec![0.0; n * width]),
    };
    let mut y = Vec::with_capacity(n * j);
    for row in sums.chunks_exact(width).take(n) {
        y.extend(row.iter().zip(bias).map(|(s, b)| s + b));
    }
    y
}

/// `x W` over a range of the weight's rows, row by row ([`stream`]).
struct Stream<'a> {
    n: usize,
    i: usize,
    j: usize,
    /// The first weight row.
    start: usize,
    /// Past the last weight row.
    end: usize,
    /// `[n, i]`.
    x: &'a [f32],
    /// `[i, j]`.
    weight: &'a [f32],
}

impl WithLanes for Stream<'_> {
    /// `[n, j rounded up to 8]`: the partial sums, zero past the last column.
    type Output = Vec<f32>;

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) -> Vec<f32> {
        let (n, i, j) = (self.n, self.i, self.j);
        let vectors = j.div_ceil(8);
        let mut sums = vec![[0.0f32; 8]; n * vectors];
        for r in self.start..self.end {
            let (full, tail) = self.weight[r * j..][..j].as_chunks::<8>();
            for (b, sums) in sums.chunks_exact_mut(vectors).enumerate() {
                let a = self.x[b * i + r];
                if a == 0.0 {
                    continue;
                }
                for (s, w) in sums.iter_mut().zip(full) {
                    *s = lanes.store(lanes.fma(lanes.load(s), a, lanes.load(w)));
                }
                if let Some(last) = sums.get_mut(full.len()) {
                    last.iter_mut().zip(tail).for_each(|(s, w)| *s += a * w);
                }
            }
        }
        sums.into_iter().flatten().collect()
    }
}

/// `x W` over a range of the inner dimension.
struct Depth<'a> {
    n: usize,
    i: usize,
    j: usize,
    /// The first weight row.
    start: usize,
    /// Past the last weight row.
    end: usize,
    /// `[n, i]`.
    x: &'a [f32],
    weight: Weight<'a>,
}

impl WithLanes for Depth<'_> {
    /// `[n, panels * 16]`: the partial sums, zero past the last column.
    type Output = Vec<f32>;

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) -> Vec<f32> {
        let (n, i, j) = (self.n, self.i, self.j);
        if let (Some(zmm), Weight::Rows(weight)) = (lanes.zmm(), self.weight)
            && j.is_multiple_of(4 * PANEL)
        {
            return self.copied_blocks(zmm, weight);
        }
        let panels = j.div_ceil(PANEL);
        let width = panels * PANEL;
        let mut sums = vec![0.0f32; n * width];
        // `[panel][depth][16]`; columns past the last stay zero.
        let mut packed = CacheAligned::here(panels * FORWARD_DEPTH, [0.0f32; PANEL]);
        for start in (self.start..self.end).step_by(FORWARD_DEPTH) {
            let depth = FORWARD_DEPTH.min(self.end - start);
            Pack { weight: self.weight, j, start, depth, stride: FORWARD_DEPTH, packed: &mut packed }.run(lanes);
            for (p, panel) in packed.chunks_exact(FORWARD_DEPTH).enumerate() {
                let panel = &panel[..depth];
                for top in (0..n).step_by(L::TILE) {
                    // The last tile repeats the last image where it runs past it.
                    let rows = runs(self.x, starts::<MR>(top, n - 1, i), start, depth);
                    let mut acc = [[[0.0f32; 8]; 2]; MR];
                    for (r, acc) in acc.iter_mut().enumerate().take((n - top).min(L::TILE)) {
                        let (sum, _) = sums[(top + r) * width + p * PANEL..][..PANEL].as_chunks::<8>();
                        *acc = [sum[0], sum[1]];
                    }
                    lanes.tile_sums(&mut acc, rows, panel);
                    for (r, acc) in acc.iter().enumerate().take((n - top).min(L::TILE)) {
                        let (sum, _) = sums[(top + r) * width + p * PANEL..][..PANEL].as_chunks_mut::<8>();
                        sum[0] = acc[0];
                        sum[1] = acc[1];
                    }
                }
            }
        }
        sums
    }
}

/// Weight rows per block of [`Depth::copied_blocks`].
const COPIED_DEPTH: usize = 128;

impl Depth<'_> {
    /// The task's rows with AVX-512, for a width of whole 64-column groups: the 4 x 64
    /// tile, [`COPIED_DEPTH`] rows at a time. Each block of 128 rows x 64 columns is
    /// first copied into 32 KB of its own, which stay in L1 while every group of four
    /// images passes over it, so the weight is read from memory once. Read where they
    /// lie, the block's rows are 4 KB apart: they fall in the same few sets of the L1
    /// cache, which holds twelve of them, and each is a page of its own, more than the
    /// data TLB's first level holds (training at 50: 1.03-1.10x in three alternations of
    /// four with the copy). Against the packed 10 x 16 tile, read in place: 1.02x with
    /// blocks of 64 rows, 1.03x more with 128, 0.98x with 256.
    ///
    /// A weight stored by rows only: [`forward`] gives one stored by columns to
    /// [`images_in_lanes`] with AVX-512.
    #[inline(always)]
    fn copied_blocks(self, zmm: Zmm, weight: &[f32]) -> Vec<f32> {
        let (n, i, j) = (self.n, self.i, self.j);
        let mut sums = vec![0.0f32; n * j];
        let mut packed = CacheAligned::here(COPIED_DEPTH, [0.0f32; 4 * PANEL]);
        for start in (self.start..self.end).step_by(COPIED_DEPTH) {
            let depth = COPIED_DEPTH.min(self.end - start);
            let block = &weight[start * j..][..depth * j];
            for column in (0..j).step_by(4 * PANEL) {
                for (to, from) in packed.iter_mut().zip(block.chunks_exact(j)) {
                    to.copy_from_slice(&from[column..][..4 * PANEL]);
                }
                let block = packed.as_flattened();
                for top in (0..n).step_by(4) {
                    // The last tile repeats the last image where it runs past it.
                    let rows = runs(self.x, starts::<4>(top, n - 1, i), start, depth);
                    let taken = (n - top).min(4);
                    let mut acc = [[[0.0f32; PANEL]; 4]; 4];
                    for (r, acc) in acc.iter_mut().enumerate().take(taken) {
                        let (from, _) = sums[(top + r) * j + column..][..4 * PANEL].as_chunks::<PANEL>();
                        acc.copy_from_slice(&from[..4]);
                    }
                    zmm.tile_sums4x64_strided(&mut acc, rows, block, 4 * PANEL);
                    for (r, acc) in acc.iter().enumerate().take(taken) {
                        sums[(top + r) * j + column..][..4 * PANEL].copy_from_slice(acc.as_flattened());
                    }
                }
            }
        }
        sums
    }
}

/// Weight rows (input-gradient columns) per parallel task of [`input_grad`]: 32 rows of
/// fc1's weight are 128 KB, which stay in L2 while every block of images passes over them.
const DOT_TASK_ROWS: usize = 32;
/// Images per register tile of [`input_grad`].
const DOT_IMAGES: usize = 5;
/// Weight rows per register tile of [`input_grad`].
const DOT_ROWS: usize = 2;
/// Floats between the end of one row of `g` and the start of the next in [`input_grad`].
const G_PAD: usize = 16;

/// `g W^T`: `g [n, j]`, `weight [i, j]` -> `[n, i]`. Each value is the dot product of a row
/// of `g` with a row of the weight, both contiguous, so nothing is packed (a matrix
/// product routine packs the 13 MB weight into panels first): tiles of 5 images x 2
/// weight rows sum `8`-lane partial products in 10 registers over the whole row, then add
/// their lanes.
pub(crate) fn input_grad(n: usize, i: usize, j: usize, g: &[f32], weight: &[f32]) -> Vec<f32> {
    if n == 0 || i == 0 || j == 0 {
        return vec![0.0; n * i];
    }
    // `g`'s rows 64 bytes further apart than `j` floats: fc1's are 4 KB long, and rows a
    // multiple of 4 KB apart fall in the same L1 set, where the five a tile reads evicted
    // each other (the whole input gradient took 5.5 ms instead of 4.3).
    let stride = j + G_PAD;
    let mut padded = vec![0.0f32; n * stride];
    for (to, from) in padded.chunks_exact_mut(stride).zip(g.chunks_exact(j)) {
        to[..j].copy_from_slice(from);
    }
    // `[i, n]` first, so that each task writes one contiguous run.
    let mut dxt = vec![0.0f32; i * n];
    dxt.par_chunks_mut(DOT_TASK_ROWS * n).enumerate().for_each(|(task, out)| {
        let rows = out.len() / n;
        dispatch(Dots { n, j, stride, g: &padded, weight: &weight[task * DOT_TASK_ROWS * j..][..rows * j], out });
    });
    let mut dx = vec![0.0f32; n * i];
    dx.par_chunks_mut(i).enumerate().for_each(|(b, row)| {
        for (r, v) in row.iter_mut().enumerate() {
            *v = dxt[r * n + b];
        }
    });
    dx
}

/// Some columns of `g W^T`, transposed.
struct Dots<'a> {
    n: usize,
    j: usize,
    /// Distance between rows of `g`, at least `j`.
    stride: usize,
    /// `[n, stride]`, the first `j` of each row used.
    g: &'a [f32],
    /// Some rows of the weight, `[rows, j]`.
    weight: &'a [f32],
    /// `[rows, n]`.
    out: &'a mut [f32],
}

impl WithLanes for Dots<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let (n, j, stride) = (self.n, self.j, self.stride);
        let rows = self.out.len() / n;
        // Images outer: a block's rows of `g` stay in L1 while the weight rows pass by.
        for first in (0..n).step_by(DOT_IMAGES) {
            // The last tile repeats the last image (or weight row) where it runs past it.
            let images = runs(self.g, starts::<DOT_IMAGES>(first, n - 1, stride), 0, j);
            for top in (0..rows).step_by(DOT_ROWS) {
                let w = runs(self.weight, starts::<DOT_ROWS>(top, rows - 1, j), 0, j);
                let sums = dot_tile(lanes, images, w);
                for (c, column) in self.out[top * n..].chunks_mut(n).take(DOT_ROWS.min(rows - top)).enumerate() {
                    for (r, sum) in sums.iter().enumerate().take(n - first) {
                        column[first + r] = sum[c];
                    }
                }
            }
        }
    }
}

/// The 10 dot products of 5 rows of `g` with 2 weight rows (all of one length).
#[inline(always)]
fn dot_tile<L: Lanes>(lanes: L, g: [&[f32]; DOT_IMAGES], w: [&[f32]; DOT_ROWS]) -> [[f32; DOT_ROWS]; DOT_IMAGES] {
    let [g0, g1, g2, g3, g4] = g;
    let [w0, w1] = w;
    let mut acc = [[lanes.zero(); DOT_ROWS]; DOT_IMAGES];
    // Zipped, so that no index is bounds-checked in the loop.
    let vectors = g0.as_chunks::<8>().0.iter().zip(g1.as_chunks::<8>().0).zip(g2.as_chunks::<8>().0);
    let vectors = vectors.zip(g3.as_chunks::<8>().0).zip(g4.as_chunks::<8>().0);
    for ((((((a0, a1), a2), a3), a4), x0), x1) in vectors.zip(w0.as_chunks::<8>().0).zip(w1.as_chunks::<8>().0) {
        let (x0, x1) = (lanes.load(x0), lanes.load(x1));
        for (r, a) in [a0, a1, a2, a3, a4].into_iter().enumerate() {
            let a = lanes.load(a);
            acc[r][0] = lanes.mul_add(acc[r][0], a, x0);
            acc[r][1] = lanes.mul_add(acc[r][1], a, x1);
        }
    }
    let tail = g0.len() / 8 * 8;
    let mut sums = [[0.0f32; DOT_ROWS]; DOT_IMAGES];
    for r in 0..DOT_IMAGES {
        for c in 0..DOT_ROWS {
            let v = lanes.store(acc[r][c]);
            let mut sum = sum8(v);
            for k in tail..g0.len() {
                sum += g[r][k] * w[c][k];
            }
            sums[r][c] = sum;
        }
    }
    sums
}

/// `x^T g`: `x [n, i]`, `g [n, j]` -> `[i, j]`.
#[cfg(test)]
pub(crate) fn weight_grad(n: usize, i: usize, j: usize, x: &[f32], g: &[f32]) -> Vec<f32> {
    let mut dw = zeroed(i * j);
    weight_grad_into(n, i, j, x, g, &mut dw);
    dw
}

/// `x^T g` written over `dw: [i, j]` (every value).
fn weight_grad_into(n: usize, i: usize, j: usize, x: &[f32], g: &[f32], dw: &mut [f32]) {
    // x transposed, `[i, n]`, so that a tile's rows are contiguous runs of the batch.
    // Cleared on all cores (fc2's at 512 is 2 MB, which `vec!` cleared on one).
    let mut xt = zeroed(i * n);
    xt.par_chunks_mut(n * TASK_ROWS).enumerate().for_each(|(task, rows)| {
        for (r, row) in rows.chunks_mut(n).enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = x[b * i + task * TASK_ROWS + r];
            }
        }
    });
    // g in panels of 16 columns, `[panel][n][16]`, zero past the last column.
    let panels = j.div_ceil(PANEL);
    let mut packed = CacheAligned::here(panels * n * PANEL, 0.0f32);
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

/// The first `out.len()` (at most 16) columns of one row of a register tile written into
/// `out`: as two 8-lane stores when the panel is whole, column by column at a ragged end.
#[inline(always)]
fn put_columns(out: &mut [f32], sum: &[[f32; 8]; 2]) {
    if let Ok(out) = <&mut [f32; PANEL]>::try_from(&mut *out) {
        let (halves, _) = out.as_chunks_mut::<8>();
        halves[0] = sum[0];
        halves[1] = sum[1];
    } else {
        for (c, v) in out.iter_mut().enumerate() {
            *v = sum[c / 8][c % 8];
        }
    }
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
        // Panels outer: a panel of `g` (`n` x 64 bytes) and the task's rows of `x^T` stay in
        // L1 while the tiles run (with the panels inner, every tile read all of `g` from L2).
        for (panel, g) in packed.chunks_exact(n).enumerate() {
            let columns = PANEL.min(j - panel * PANEL);
            for first in (0..rows).step_by(L::TILE) {
                // The last tile repeats the last row where it runs past it.
                let xr = runs(self.xt, starts::<MR>(first, rows - 1, n), 0, n);
                // `TILE x 16` sums over the batch: `sum over b of xr[r][b] * g[b][c]`.
                let mut sums = [[[0.0f32; 8]; 2]; MR];
                lanes.tile_sums(&mut sums, xr, g);
                for (r, sum) in sums.iter().enumerate().take((rows - first).min(L::TILE)) {
                    put_columns(&mut self.out[(first + r) * j + panel * PANEL..][..columns], sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::super::is_dense;
    use super::*;

    /// `w [i, j]` transposed: `[j, i]`, the buffer of `w` stored by columns.
    fn transpose_of(w: &[f32], i: usize, j: usize) -> Vec<f32> {
        (0..j * i).map(|k| w[(k % i) * j + k / i]).collect()
    }

    /// `len` deterministic values in about [-2, 2].
    fn values_a(len: usize) -> Vec<f32> {
        (0..len).map(|v| ((v * 37 % 101) as f32 - 50.0) / 25.0).collect()
    }

    /// `len` deterministic values in about [-1.6, 1.6], another sequence than [`values_a`].
    fn values_b(len: usize) -> Vec<f32> {
        (0..len).map(|v| ((v * 53 % 97) as f32 - 48.0) / 30.0).collect()
    }

    /// The forward paths that add their tasks' partial sums add them in one order
    /// whatever the threads steal: on pools of three and six threads, repeated products
    /// give the same bits (a few images streaming the weight, and more summing 64-row
    /// chunks in four tasks a thread).
    #[test]
    fn partial_sums_are_added_in_one_order() {
        let (i, j) = (64 * 27, 48);
        let weight = values_b(i * j);
        let bias = values_a(j);
        for n in [2, 8] {
            let x = values_a(n * i);
            for threads in [3, 6] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
                let call = || pool.install(|| forward(n, i, j, &x, Weight::Rows(&weight), &bias));
                let first = call();
                for call_number in 1..40 {
                    assert!(call() == first, "{n} images, {threads} threads, call {call_number}: other bits");
                }
            }
        }
    }

    /// A buffer handed back with [`recycle`] becomes the next buffer of as many values, in
    /// the shape asked for, and as the weight gradient every stale value is overwritten;
    /// small or shared buffers are not kept.
    #[test]
    fn a_recycled_buffer_is_overwritten_by_the_weight_gradient() {
        // 512 x 520 floats: just over 1 MiB (a count no other test's buffers have).
        let (n, i, j) = (3, 512, 520);
        recycle(from_vec(vec![f32::NAN; i * j], [i, j]));
        let kept = spare([j, i]).expect("a dense, unique 1 MiB buffer is kept");
        assert!(kept.layout().shape().as_slice() == [j, i] && kept.is_unique() && is_dense(&kept), "in the shape asked for, its own");
        recycle(from_vec(vec![0.0; 16], [4, 4]));
        assert!(spare([4, 4]).is_none(), "a small buffer is not kept");
        let shared = from_vec(vec![0.0; i * j], [j, i]);
        recycle(shared.clone());
        assert!(spare([j, i]).is_none(), "a shared buffer is not kept");
        // A gradient stored by columns is kept as its dense transpose.
        recycle(transposed(from_vec(vec![0.0; i * j], [j, i])));
        assert!(spare([j, i]).is_some_and(|t| is_dense(&t)), "a buffer stored by columns is kept, dense");
        recycle(kept);

        let device = Default::default();
        let xs = values_a(n * i);
        let gs = values_b(n * j);
        let x = Tensor::<Ad, 2>::from_data(TensorData::new(xs.clone(), [n, i]), &device);
        let weight = Tensor::<Ad, 2>::zeros([i, j], &device).require_grad();
        let bias = Tensor::<Ad, 1>::zeros([j], &device).require_grad();
        let y = linear(x, weight.clone(), bias).unwrap_or_else(|_| panic!("flex linear"));
        let mix = Tensor::<Ad, 2>::from_data(TensorData::new(gs.clone(), [n, j]), &device);
        let grads = (y * mix).sum().backward();
        let dw = weight.grad(&grads).expect("dw").into_data().to_vec::<f32>().expect("f32");
        assert!(spare([i, j]).is_none(), "the recycled buffer was taken");
        let expect = weight_grad(n, i, j, &xs, &gs);
        assert!(dw.iter().zip(&expect).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())));
    }

    /// The small-batch forward's tasks compute `x W` on every instruction set this CPU has
    /// and the portable one, whichever tile each takes: the packed 10 x 16 or 5 x 16, or
    /// the weight read in place (4 x 64 with AVX-512, for whole 64-column groups), over a
    /// depth that ends in a partial block. (Read in place by AVX2 in 3 x 32 tiles, training
    /// at 50 ran at 0.998x the packed 5 x 16 tile: not kept.)
    #[test]
    fn every_instruction_set_computes_the_small_batch_product() {
        use super::super::lanes::{available, dispatch_with};
        use crate::Simd;
        let value = super::super::test_value;
        for (n, i, j) in [(5, 150, 37), (7, 150, 64), (50, 150, 96), (50, 300, 128), (3, 70, 32)] {
            let x: Vec<f32> = (0..n * i).map(value).collect();
            let weight: Vec<f32> = (0..i * j).map(|k| value(k + 7)).collect();
            let width = j.div_ceil(PANEL) * PANEL;
            let weight_t = transpose_of(&weight, i, j);
            for (simd, stored) in available().into_iter().chain([Simd::Portable]).flat_map(|simd| [(simd, Weight::Rows(&weight)), (simd, Weight::Columns(&weight_t))]) {
                let sums = dispatch_with(simd, Depth { n, i, j, start: 0, end: i, x: &x, weight: stored });
                for b in 0..n {
                    for c in 0..j {
                        let expect: f64 = (0..i).map(|k| f64::from(x[b * i + k]) * f64::from(weight[k * j + c])).sum();
                        let got = f64::from(sums[b * width + c]);
                        assert!((got - expect).abs() <= 1e-4 * (1.0 + expect.abs()), "{simd:?}, {stored:?}, {n} x {i} x {j}: [{b}, {c}] {got} against {expect}");
                    }
                }
            }
        }
    }

    /// Without autodiff (inference) the op computes the same as Burn's `matmul` + bias, at
    /// every batch (the blocked product above 64 images, over several blocks of depth), for
    /// a width of odd panels and one of whole 64-column groups (which AVX-512's small-batch
    /// tile reads in place), with a depth that ends in a partial block.
    #[test]
    fn inference_linear_matches_burn() {
        use burn::tensor::Distribution;
        let device = Default::default();
        let cases = [(1, 83, 37), (5, 83, 37), (SMALL_BATCH, 83, 37), (SMALL_BATCH + 1, 83, 37), (SMALL_BATCH + 9, 1100, 37)];
        let wide = [(5, 150, 128), (7, 150, 128), (50, 150, 192), (SMALL_BATCH, 83, 64)];
        for (n, i, j) in cases.into_iter().chain(wide) {
            let x = Tensor::<Flex, 2>::random([n, i], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<Flex, 2>::random([i, j], Distribution::Normal(0.0, 0.1), &device);
            let b = Tensor::<Flex, 1>::random([j], Distribution::Normal(0.0, 0.1), &device);
            let reference = (x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>()).into_data().to_vec::<f32>().expect("f32");
            let by_columns = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(super::super::by_columns(float(w.clone()))));
            for (layout, w) in [("rows", w), ("columns", by_columns)] {
                let ours = linear(x.clone(), w, b.clone()).unwrap_or_else(|_| panic!("flex linear"));
                let a = ours.into_data().to_vec::<f32>().expect("f32");
                assert!(a.iter().zip(&reference).all(|(a, r)| (a - r).abs() <= 1e-4 * (1.0 + r.abs())), "by {layout}, batch {n}, {i} x {j}");
            }
        }
    }

    /// The op against Burn's `matmul` + bias on `Autodiff<Flex>`, output and every gradient,
    /// with a batch that takes the own kernels and one that takes burn-flex's products, and
    /// an output gradient that is dense or three quarters zero (as dropout and ReLU leave
    /// fc1's in training: the sparse backward pass), with the weight stored by rows and by
    /// columns (whose gradient comes stored by columns too), over depths with whole 64-row
    /// blocks and a partial one.
    #[test]
    fn linear_matches_burn_for_small_and_large_batches() {
        use burn::tensor::Distribution;
        let device = Default::default();
        let rows = [(7, false), (SMALL_BATCH + 6, false), (7, true), (50, true), (SMALL_BATCH + 6, true)].map(|(n, zeros)| (n, zeros, 83, 37, false));
        let columns = [(7, false, 83, 37), (SMALL_BATCH + 6, false, 150, 70), (7, true, 150, 70), (50, true, 128, 64), (SMALL_BATCH + 6, true, 150, 70)].map(|(n, zeros, i, j)| (n, zeros, i, j, true));
        for (n, zeros, i, j, by_columns) in rows.into_iter().chain(columns) {
            let x = Tensor::<Ad, 2>::random([n, i], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = Tensor::<Flex, 2>::random([i, j], Distribution::Normal(0.0, 0.1), &device);
            let w = if by_columns { Tensor::from_primitive(TensorPrimitive::Float(super::super::by_columns(float(w)))) } else { w };
            let w = Tensor::<Ad, 2>::from_inner(w).require_grad();
            let b = Tensor::<Ad, 1>::random([j], Distribution::Normal(0.0, 0.1), &device).require_grad();
            let mix = Tensor::<Ad, 2>::random([n, j], Distribution::Normal(0.0, 1.0), &device);
            let mix = if zeros {
                let keep = Tensor::<Ad, 2>::random([n, j], Distribution::Uniform(0.0, 1.0), &device).lower_elem(0.25).float();
                let g = values::<2>(&float(mix.clone() * keep.clone()).primitive).into_owned();
                assert!(Entries::of(n, j, &g, SPARSE_DENSITY).is_some(), "batch {n}: sparse enough for the sparse pass");
                mix * keep
            } else {
                mix
            };
            let ours = linear(x.clone(), w.clone(), b.clone()).unwrap_or_else(|_| panic!("flex linear"));
            let reference = x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>();
            let values = |t: Tensor<Ad, 2>| t.into_data().to_vec::<f32>().expect("f32");
            let close = |a: &[f32], r: &[f32]| a.iter().zip(r).all(|(a, r)| (a - r).abs() <= 1e-4 * (1.0 + r.abs()));
            assert!(close(&values(ours.clone()), &values(reference.clone())), "forward, batch {n}");
            let (g1, g2) = ((ours * mix.clone()).sum().backward(), (reference * mix).sum().backward());
            let dw = float(w.grad(&g1).expect("dw"));
            assert_eq!(is_dense_by_columns(&dw), by_columns, "dw stored as the weight, batch {n}");
            for (name, a, r) in [
                ("dx", x.grad(&g1), x.grad(&g2)),
                ("dw", w.grad(&g1), w.grad(&g2)),
            ] {
                let (a, r) = (a.expect("grad").into_data().to_vec::<f32>().expect("f32"), r.expect("grad").into_data().to_vec::<f32>().expect("f32"));
                assert!(close(&a, &r), "{name}, batch {n}, sparse {zeros}, by columns {by_columns}");
            }
            let (a, r) = (b.grad(&g1).expect("db"), b.grad(&g2).expect("db"));
            assert!(close(&a.into_data().to_vec::<f32>().expect("f32"), &r.into_data().to_vec::<f32>().expect("f32")), "db, batch {n}");
        }
    }

    #[test]
    fn forward_is_x_times_weight_plus_bias() {
        // Images not a multiple of 5, rows not of the depth, columns not of 16 or of a task.
        // 1 to 4 images stream the weight's rows (over several tasks from 512 rows), 5 and
        // more pack it.
        // Above 64 images the blocked product: depths of one block, several and a partial
        // last one, and no depth at all (the bias alone).
        for (n, i, j) in [
            (3, 7, 10),
            (50, 300, 83),
            (1, 1, 1),
            (7, 129, 64),
            (6, 0, 5),
            (0, 4, 3),
            (2, 3, 0),
            (1, 700, 21),
            (4, 1029, 40),
            (5, 9, 9),
            (65, 37, 19),
            (123, 1100, 35),
            (70, 512, 16),
            // Six panels (four in the 4 x 64 tile with AVX-512, two after), two blocks,
            // images not a multiple of 4; and exactly four panels.
            (130, 600, 83),
            (66, 513, 64),
            (67, 0, 3),
            (200, 3, 1),
        ] {
            // Some inputs exactly zero, as after ReLU (the streaming path skips their rows).
            let x: Vec<f32> = values_a(n * i).into_iter().enumerate().map(|(k, v)| if k % 3 == 1 { 0.0 } else { v }).collect();
            let w = values_b(i * j);
            let bias: Vec<f32> = (0..j).map(|v| v as f32 / 7.0 - 1.0).collect();
            let w_t = transpose_of(&w, i, j);
            for (layout, weight) in [("rows", Weight::Rows(&w)), ("columns", Weight::Columns(&w_t))] {
                let y = forward(n, i, j, &x, weight, &bias);
                assert_eq!(y.len(), n * j);
                for b in 0..n {
                    for c in 0..j {
                        let expect: f32 = bias[c] + (0..i).map(|r| x[b * i + r] * w[r * j + c]).sum::<f32>();
                        let got = y[b * j + c];
                        assert!((got - expect).abs() <= 1e-4 * (1.0 + expect.abs()), "by {layout} {:?} [{b},{c}]: {got} vs {expect}", (n, i, j));
                    }
                }
            }
        }
    }

    /// A weight stored by columns: with AVX-512, the images in the lanes at every split of
    /// a batch into groups of 16 (pairs, an odd group, 1 to 4 images left as dot
    /// products, 5 to 15 as a padded group), over depths not a multiple of 16 and widths
    /// not of 8; and on every CPU the blocked product's panels transposed from the stored
    /// rows.
    #[test]
    fn a_weight_stored_by_columns_gives_x_times_weight_plus_bias() {
        let check = |what: &str, (n, i, j): (usize, usize, usize), y: &[f32], x: &[f32], w: &[f32], bias: &[f32]| {
            assert_eq!(y.len(), n * j, "{what} {:?}", (n, i, j));
            for b in 0..n {
                for c in 0..j {
                    let expect: f32 = bias[c] + (0..i).map(|r| x[b * i + r] * w[r * j + c]).sum::<f32>();
                    let got = y[b * j + c];
                    assert!((got - expect).abs() <= 1e-4 * (1.0 + expect.abs()), "{what} {:?} [{b},{c}]: {got} vs {expect}", (n, i, j));
                }
            }
        };
        let lanes = [(1, 33, 9), (4, 16, 8), (16, 17, 8), (17, 40, 13), (20, 31, 16), (21, 300, 83), (32, 5, 7), (48, 64, 24), (50, 300, 83), (64, 1, 1), (3, 0, 5)];
        for (n, i, j) in lanes {
            let (x, w) = (values_a(n * i), values_b(i * j));
            let bias: Vec<f32> = (0..j).map(|v| v as f32 / 7.0 - 1.0).collect();
            let w_t = transpose_of(&w, i, j);
            if chosen() == Simd::Avx512 {
                check("in lanes", (n, i, j), &images_in_lanes(n, i, j, &x, &w_t, &bias), &x, &w, &bias);
            }
        }
        for (n, i, j) in [(65, 37, 19), (130, 600, 83), (66, 513, 64), (67, 0, 3)] {
            let (x, w) = (values_a(n * i), values_b(i * j));
            let bias: Vec<f32> = (0..j).map(|v| v as f32 / 7.0 - 1.0).collect();
            let w_t = transpose_of(&w, i, j);
            check("blocked", (n, i, j), &blocked(n, i, j, &x, Weight::Columns(&w_t), &bias), &x, &w, &bias);
        }
    }

    /// The packed weight kept from one call of [`blocked`] to the next serves a call of the
    /// same shape with other values, stored by rows or by columns, and not one of another
    /// shape: each call gives its own product.
    #[test]
    fn a_kept_packed_weight_gives_each_calls_product() {
        for (call, (n, i, j)) in [(70, 600, 83), (70, 600, 83), (66, 513, 83), (70, 600, 83), (66, 600, 80), (70, 600, 83)].into_iter().enumerate() {
            let x = values_a(n * i + call)[call..].to_vec();
            let w = values_b(i * j + 3 * call)[3 * call..].to_vec();
            let bias: Vec<f32> = (0..j).map(|v| (v + call) as f32 / 7.0 - 1.0).collect();
            let y = if call % 2 == 0 { blocked(n, i, j, &x, Weight::Rows(&w), &bias) } else { blocked(n, i, j, &x, Weight::Columns(&transpose_of(&w, i, j)), &bias) };
            for b in 0..n {
                for c in 0..j {
                    let expect: f32 = bias[c] + (0..i).map(|r| x[b * i + r] * w[r * j + c]).sum::<f32>();
                    assert!((y[b * j + c] - expect).abs() <= 1e-4 * (1.0 + expect.abs()), "call {call} {:?} [{b},{c}]: {} vs {expect}", (n, i, j), y[b * j + c]);
                }
            }
        }
    }

    /// Packed weights of several shapes are kept side by side (fc1's and fc2's, called in
    /// turn), one per shape, the oldest dropped past [`KEPT_PACKED_SHAPES`].
    #[test]
    fn packed_weights_are_kept_per_shape() {
        let packed = |shape: (usize, usize), v: f32| (shape, CacheAligned::filled(2, [v; PANEL]));
        let mut kept = Vec::new();
        keep_packed(&mut kept, packed((3136, 1024), 1.0));
        keep_packed(&mut kept, packed((1024, 10), 2.0));
        assert!(take_packed(&mut kept, (3136, 1024)).is_some_and(|p| p[0][0] == 1.0), "fc1's, after fc2's was kept");
        assert!(take_packed(&mut kept, (3136, 1024)).is_none(), "taken");
        keep_packed(&mut kept, packed((1024, 10), 3.0));
        assert!(kept.len() == 1 && take_packed(&mut kept, (1024, 10)).is_some_and(|p| p[0][0] == 3.0), "one per shape, the last kept");
        for s in 0..=KEPT_PACKED_SHAPES {
            keep_packed(&mut kept, packed((s, 1), s as f32));
        }
        assert_eq!(kept.len(), KEPT_PACKED_SHAPES);
        assert!(take_packed(&mut kept, (0, 1)).is_none() && take_packed(&mut kept, (KEPT_PACKED_SHAPES, 1)).is_some(), "the oldest dropped");
    }

    #[test]
    fn input_grad_is_g_times_weight_transposed() {
        // Images not a multiple of 5, weight rows not of 2 or of a task, row length not of 8.
        for (n, i, j) in [(3, 7, 10), (50, 83, 33), (1, 1, 1), (7, 65, 16), (6, 3, 0)] {
            let g = values_b(n * j);
            let w = values_a(i * j);
            let dx = input_grad(n, i, j, &g, &w);
            assert_eq!(dx.len(), n * i);
            for b in 0..n {
                for r in 0..i {
                    let expect: f32 = (0..j).map(|c| g[b * j + c] * w[r * j + c]).sum();
                    let got = dx[b * i + r];
                    assert!((got - expect).abs() <= 1e-4 * (1.0 + expect.abs()), "{:?} [{b},{r}]: {got} vs {expect}", (n, i, j));
                }
            }
        }
    }

    #[test]
    fn weight_grad_is_x_transposed_times_g() {
        // Shapes with remainders: rows not a multiple of 5 or of a task, columns not of 16.
        for (n, i, j) in [(3, 7, 10), (50, 83, 33), (1, 1, 1), (4, 41, 16)] {
            let x = values_a(n * i);
            let g = values_b(n * j);
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
