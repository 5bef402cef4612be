//! The fully connected layer's backward pass over the non-zero entries of its output
//! gradient only.
//!
//! In training, the gradient `g [n, j]` that reaches fc1 has passed through dropout (which
//! zeroes half of it) and ReLU's derivative (which zeroes where the layer's output was not
//! positive, about half of the rest): about three quarters of it is exactly zero. Both
//! products of the backward pass sum over `g`'s entries, so listing the non-zero ones
//! ([`Entries`], by row and by column) and visiting only those does about a quarter of the
//! dense products' multiply-adds:
//!
//! - input gradient `dx = g W^T` (`[n, i]`): for each block of 64 weight rows, the block is
//!   transposed (`[j][64]`, 256 KB for fc1, in L2), and each image's 64 values are the sum,
//!   over its row's entries `(c, g)`, of `g * block[c]`: one broadcast and one 64-wide
//!   multiply-add per entry ([`Lanes::sum_list64`]), taken by passes of 256 columns (64 KB
//!   of the block) over every image ([`TRANSPOSED_SPANS`]);
//! - weight gradient `dW = x^T g` (`[i, j]`): for each block of 64 rows of `dW`, the
//!   images' 64 inputs of the block are copied out (`[n][64]`), each column `c` of the block
//!   is the sum, over that column's entries `(b, g)`, of `g * inputs[b]` (the same kernel),
//!   by spans of 128 images (32 KB of inputs, [`IMAGE_SPAN`]), and the block is transposed
//!   into `dW`'s rows as it is written.
//!
//! A weight stored by columns ([`Weight::Columns`], its buffer `W^T [j, i]`) needs no
//! transpose: each block's `[j][64]` is 64 values of each stored row, read where they lie
//! ([`Rows64::columns`]) by spans of 64 of those rows ([`SPAN`]), and the weight gradient
//! is written as `dW^T [j, i]`, each stored row `c` 64 values at a time from the sum over
//! column `c`'s entries of `g * x[b][block]`, the images' inputs also read where they lie
//! ([`weight_grad_by_columns_into`]).
//!
//! The dense kernels ([`mod@super::linear`]) read or write each weight as often; what the sparse
//! pass saves is arithmetic (three quarters) at the price of the block transposes. It is
//! taken when at most [`SPARSE_DENSITY`] of `g` is non-zero. The sums differ from the dense
//! products' only in rounding (they add the same non-zero terms in another order), except
//! against a weight or input that is infinite or NaN, which a zero entry leaves out where
//! the dense product's `0 * inf` is NaN; the training loop stops at any non-finite weight
//! or loss either way.

use rayon::prelude::*;

use super::lanes::{Lanes, Rows64, WithLanes, dispatch};
use super::linear::Weight;
use super::layout::{CacheAligned, filled};

/// The largest fraction of non-zero entries in the output gradient for which the backward
/// pass visits its entries ([`Entries::of`] says `None` above it). At fc1's shape (batch
/// 50, AVX-512, criterion) forward + backward took 3.6, 4.0, 4.4 and 5.0 ms with the
/// sparse pass at densities 0.3, 0.4, 0.5 and 0.6 (6.6 ms at 1.0), and 4.5 to 4.7 ms with
/// the dense kernels: they cross at about half, and 0.4 leaves room for CPUs whose
/// transposes cost more.
pub(crate) const SPARSE_DENSITY: f64 = 0.4;

/// Rows of the weight (and of its gradient) per block: four 16-lane vectors (eight of
/// eight lanes), so that each entry's index and value, read once, feed four multiply-adds.
const BLOCK: usize = 64;

/// Columns of `g` per span of the input gradient by spans ([`InputGradBlock`]): each
/// span's 64 rows of a block's weight values (16 KB) stay in L1 while every image's
/// entries in the span pass.
const SPAN: usize = 64;

/// Spans of [`SPAN`] columns per pass of the input gradient over a transposed block (a
/// weight stored by rows): 256 columns, 64 KB of the block, which stay in L1 and L2's
/// nearest lines while every image's entries in them pass. Measured at fc1's shape, batch
/// 512, two threads of an Intel Xeon (AVX-512), least of eight: whole rows (1,024
/// columns, the block's 256 KB) 11.1 to 11.5 ms, passes of 64 columns 11.0 to 11.2, of 128
/// 8.8 to 9.4, of 256 8.2 to 9.1.
const TRANSPOSED_SPANS: usize = 4;

/// Images per span of the weight gradient over a block of copied inputs
/// ([`WeightGradBlock`]): their 64 inputs each (32 KB) stay in L1 while every column's
/// entries of those images pass.
const IMAGE_SPAN: usize = 128;

/// Values of `g` from which [`Entries::of`] lists them on all cores. At fc1's shape, two
/// threads of an Intel Xeon, least of 30: at batch 512, 1.6 ms on one thread, 0.7 to 0.9
/// on both; at 50, 93 us on one, 112 on both.
const PARALLEL_ENTRIES: usize = 1 << 17;

/// The non-zero entries of a matrix `g [n, j]`, listed by row and by column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entries {
    n: usize,
    j: usize,
    /// Row by row, each row's entries in column order: (column, value).
    by_row: Vec<(u32, f32)>,
    /// `n * spans + 1` offsets into `by_row` (`spans = j.div_ceil(SPAN)`): where each row's
    /// entries of each span of [`SPAN`] columns start, then the end. Row `b`'s span `s` is
    /// `by_row[span_starts[b * spans + s]..span_starts[b * spans + s + 1]]`, and the whole
    /// row runs from `span_starts[b * spans]` to `span_starts[(b + 1) * spans]`
    /// ([`Entries::row_spans`]).
    span_starts: Vec<usize>,
    /// Column by column, each column's entries in row order: (row, value).
    by_column: Vec<(u32, f32)>,
    /// `(image_spans + 1) * j` offsets into `by_column` (`image_spans = n.div_ceil(IMAGE_SPAN)`,
    /// at least 1): `[t * j + c]` is where column `c`'s entries of rows from
    /// `t * IMAGE_SPAN` on start; `[image_spans * j + c]`, where the column ends
    /// ([`Entries::column`], [`Entries::column_span`]).
    column_span_starts: Vec<usize>,
}

impl Entries {
    /// Lists the non-zero entries of `g [n, j]`, or `None` when more than `max_density`
    /// of them are non-zero (or an index would not fit in 32 bits).
    ///
    /// From [`PARALLEL_ENTRIES`] values on, on all cores (two tasks a thread,
    /// [`Entries::in_tasks`]), else in one task: on one thread, listing fc1's gradient at
    /// 512 (half a million values) was a hundredth of a training step's samples, the other
    /// core idle meanwhile.
    pub(crate) fn of(n: usize, j: usize, g: &[f32], max_density: f64) -> Option<Entries> {
        let tasks = if n * j >= PARALLEL_ENTRIES { 2 * rayon::current_num_threads().max(1) } else { 1 };
        Self::in_tasks(n, j, g, max_density, tasks)
    }

    /// [`Entries::of`] in `tasks` tasks (the same lists for any number): the lists by row
    /// by tasks of whole rows, each writing where its rows' entries go (their counts are
    /// known from the first pass); the lists by column by tasks of whole spans of [`SPAN`]
    /// columns, which read only their spans of each row.
    fn in_tasks(n: usize, j: usize, g: &[f32], max_density: f64, tasks: usize) -> Option<Entries> {
        let g = &g[..n * j];
        if u32::try_from(n.max(j)).is_err() {
            return None;
        }
        let spans = j.div_ceil(SPAN);
        let image_spans = n.div_ceil(IMAGE_SPAN).max(1);
        if n == 0 || j == 0 {
            let column_span_starts = vec![0; if n == 0 { (image_spans + 1) * j } else { 0 }];
            return Some(Entries { n, j, by_row: Vec::new(), span_starts: vec![0], by_column: Vec::new(), column_span_starts });
        }
        // Counted first (branch-free), so that a dense gradient costs one pass.
        let rows_per_task = n.div_ceil(tasks);
        let counts: Vec<usize> = g.par_chunks(rows_per_task * j).map(|rows| rows.iter().map(|v| usize::from(*v != 0.0)).sum()).collect();
        let nonzero: usize = counts.iter().sum();
        if nonzero as f64 > max_density * (n * j) as f64 {
            return None;
        }
        let mut by_row = filled(nonzero, (0u32, 0.0f32));
        let mut span_starts = vec![0; n * spans + 1];
        span_starts[n * spans] = nonzero;
        {
            // Each task's rows, their part of `by_row` and of `span_starts`.
            let mut parts = Vec::with_capacity(counts.len());
            let (mut entries, mut starts, mut base) = (&mut by_row[..], &mut span_starts[..n * spans], 0);
            for (rows, &count) in g.chunks(rows_per_task * j).zip(&counts) {
                let (mine, rest) = std::mem::take(&mut entries).split_at_mut(count);
                let (my_starts, rest_starts) = std::mem::take(&mut starts).split_at_mut(rows.len() / j * spans);
                parts.push((rows, mine, my_starts, base));
                (entries, starts, base) = (rest, rest_starts, base + count);
            }
            parts.into_par_iter().for_each(|(rows, entries, starts, base)| {
                let (mut len, mut sink) = (0, (0u32, 0.0f32));
                let mut starts = starts.iter_mut();
                for row in rows.chunks(j) {
                    for (span, values) in row.chunks(SPAN).enumerate() {
                        if let Some(start) = starts.next() {
                            *start = base + len;
                        }
                        // Every value is written at the list's end and only a non-zero one
                        // moves the end on: whether a value is zero is random, and a branch
                        // on it mispredicts. (Past the task's last entry, into `sink`: a
                        // branch that goes one way until then, so it predicts well.)
                        for (c, &v) in values.iter().enumerate() {
                            *entries.get_mut(len).unwrap_or(&mut sink) = ((span * SPAN + c) as u32, v);
                            len += usize::from(v != 0.0);
                        }
                    }
                }
            });
        }
        // Tasks of whole spans of columns: each one's entries are a contiguous part of
        // `by_column` (the columns in order), as long as its spans' entries of every row.
        let span_tasks = tasks.min(spans);
        let ranges: Vec<(usize, usize)> = (0..span_tasks).map(|t| (t * spans / span_tasks, (t + 1) * spans / span_tasks)).collect();
        let in_spans = |b: usize, (s0, s1): (usize, usize)| span_starts[b * spans + s0]..span_starts[b * spans + s1];
        let mut by_column = filled(nonzero, (0u32, 0.0f32));
        let mut parts = Vec::with_capacity(span_tasks);
        let (mut rest, mut base) = (&mut by_column[..], 0);
        for &range in &ranges {
            let count: usize = (0..n).map(|b| in_spans(b, range).len()).sum();
            let (mine, others) = std::mem::take(&mut rest).split_at_mut(count);
            parts.push((range, mine, base));
            (rest, base) = (others, base + count);
        }
        // Each task's column span starts, `[image span + 1][its columns]`, from its base.
        let locals: Vec<(usize, usize, Vec<usize>)> = parts
            .into_par_iter()
            .map(|((s0, s1), out, base)| {
                let (c0, c1) = (s0 * SPAN, (s1 * SPAN).min(j));
                let columns = c1 - c0;
                let mut next = vec![0usize; columns + 1];
                for b in 0..n {
                    for &(c, _) in &by_row[in_spans(b, (s0, s1))] {
                        next[c as usize - c0 + 1] += 1;
                    }
                }
                for c in 0..columns {
                    next[c + 1] += next[c];
                }
                let mut starts = Vec::with_capacity((image_spans + 1) * columns);
                for b in 0..n {
                    if b % IMAGE_SPAN == 0 {
                        starts.extend(next[..columns].iter().map(|at| base + at));
                    }
                    for &(c, v) in &by_row[in_spans(b, (s0, s1))] {
                        let at = &mut next[c as usize - c0];
                        out[*at] = (b as u32, v);
                        *at += 1;
                    }
                }
                // The columns' ends.
                starts.extend(next[..columns].iter().map(|at| base + at));
                (c0, columns, starts)
            })
            .collect();
        let mut column_span_starts = vec![0; (image_spans + 1) * j];
        for (c0, columns, starts) in locals {
            for (t, starts) in starts.chunks(columns.max(1)).enumerate() {
                column_span_starts[t * j + c0..][..columns].copy_from_slice(starts);
            }
        }
        Some(Entries { n, j, by_row, span_starts, by_column, column_span_starts })
    }

    /// Column `c`'s entries, in row order.
    #[inline(always)]
    fn column(&self, c: usize) -> &[(u32, f32)] {
        let image_spans = self.n.div_ceil(IMAGE_SPAN).max(1);
        &self.by_column[self.column_span_starts[c]..self.column_span_starts[image_spans * self.j + c]]
    }

    /// Column `c`'s entries in rows `t * IMAGE_SPAN..(t + 1) * IMAGE_SPAN`, in row order.
    #[inline(always)]
    fn column_span(&self, c: usize, t: usize) -> &[(u32, f32)] {
        let at = t * self.j + c;
        &self.by_column[self.column_span_starts[at]..self.column_span_starts[at + self.j]]
    }

    /// Row `b`'s entries, in column order.
    #[cfg(test)]
    fn row(&self, b: usize) -> &[(u32, f32)] {
        self.row_spans(b, 0, self.j.div_ceil(SPAN))
    }

    /// Row `b`'s entries in columns `span * SPAN..(span + 1) * SPAN`, in column order.
    #[cfg(test)]
    fn row_span(&self, b: usize, span: usize) -> &[(u32, f32)] {
        self.row_spans(b, span, 1)
    }

    /// Row `b`'s entries in spans `first..first + count` (those of them there are), in
    /// column order.
    #[inline(always)]
    fn row_spans(&self, b: usize, first: usize, count: usize) -> &[(u32, f32)] {
        let spans = self.j.div_ceil(SPAN);
        let at = b * spans;
        &self.by_row[self.span_starts[at + first]..self.span_starts[at + (first + count).min(spans)]]
    }

    /// How many entries are listed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_row.len()
    }
}

/// `g W^T` from `g`'s entries: `weight [i, j]` -> `[n, i]` (see the module's overview). A
/// weight stored column by column is read where it lies: each of its `j` stored rows holds
/// the block's 64 values contiguously (a last block shorter than 64 is copied out).
pub(crate) fn input_grad_into(i: usize, entries: &Entries, weight: Weight<'_>, dx: &mut [f32]) {
    let (n, j) = (entries.n, entries.j);
    assert_eq!(dx.len(), n * i, "the input gradient of {n} images of {i}");
    if n == 0 || i == 0 || j == 0 {
        dx.fill(0.0);
        return;
    }
    let blocks = i.div_ceil(BLOCK);
    // Each block's 64 columns of every image's row, by block: the blocks' tasks write
    // their sums into `dx` where they belong. (Through a `[block][n][64]` buffer, then
    // gathered into `dx`'s rows, that buffer's clearing and the gather were a hundredth
    // of a training step at 50.)
    let mut columns: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::with_capacity(n)).collect();
    for row in dx.chunks_mut(i) {
        for (block, part) in columns.iter_mut().zip(row.chunks_mut(BLOCK)) {
            block.push(part);
        }
    }
    columns.into_par_iter().enumerate().for_each(|(index, mut out)| {
        let first = index * BLOCK;
        let rows = BLOCK.min(i - first);
        match weight {
            Weight::Rows(weight) => {
                let rows = &weight[first * j..][..rows * j];
                with_scratch([j], |[block]| dispatch(InputGradBlock { weight: BlockWeight::Transposed { rows, j, block }, entries, out: &mut out }));
            }
            Weight::Columns(weight) if rows == BLOCK => {
                dispatch(InputGradBlock { weight: BlockWeight::Ready(Rows64::columns(weight, i, first)), entries, out: &mut out });
            }
            Weight::Columns(weight) => with_scratch([j], |[block]| {
                copy_block(weight, i, first, rows, block);
                dispatch(InputGradBlock { weight: BlockWeight::Ready(Rows64::dense(block)), entries, out: &mut out });
            }),
        }
    });
}

/// `x^T g` from `g`'s entries, written over `dw: [i, j]` (every value): `x [n, i]` (see the
/// module's overview).
pub(crate) fn weight_grad_into(i: usize, x: &[f32], entries: &Entries, dw: &mut [f32]) {
    let (n, j) = (entries.n, entries.j);
    if j == 0 {
        return;
    }
    dw[..i * j].par_chunks_mut(BLOCK * j).enumerate().for_each(|(index, out)| {
        let (first, rows) = (index * BLOCK, out.len() / j);
        with_scratch([n, j], |[inputs, columns]| {
            copy_block(x, i, first, rows, inputs);
            dispatch(WeightGradBlock { inputs, j, columns, entries, out });
        });
    });
}

/// `x^T g` from `g`'s entries, stored column by column: written over `dw_t: [j, i]` (every
/// value), the transpose of the gradient, for a weight stored so. Row `c` of `dw_t` is, 64
/// values at a time, the sum over column `c`'s entries `(b, g)` of `g * x[b][block]`, read
/// from `x` where they lie (a last block shorter than 64 is copied out): nothing is
/// transposed. Each task takes a range of `dw_t`'s rows (contiguous in memory), blocks
/// outer, so that a block of `x` (`n` x 256 bytes) stays in cache while its rows pass.
pub(crate) fn weight_grad_by_columns_into(i: usize, x: &[f32], entries: &Entries, dw_t: &mut [f32]) {
    let j = entries.j;
    if i == 0 || j == 0 {
        return;
    }
    let tasks = (4 * rayon::current_num_threads()).min(j);
    let task_rows = j.div_ceil(tasks);
    dw_t[..j * i].par_chunks_mut(task_rows * i).enumerate().for_each(|(task, out)| {
        dispatch(WeightGradRows { i, x, entries, first: task * task_rows, out });
    });
}

/// Columns `first..first + rows` (`rows <= 64`) of each row of `m [block.len(), i]` (the
/// images' inputs, or a weight's stored rows) into `block`'s rows (`[..][64]`), zero past
/// `rows`.
fn copy_block(m: &[f32], i: usize, first: usize, rows: usize, block: &mut [[f32; BLOCK]]) {
    for (b, to) in block.iter_mut().enumerate() {
        to[..rows].copy_from_slice(&m[b * i + first..][..rows]);
        to[rows..].fill(0.0);
    }
}

thread_local! {
    /// This thread's scratch blocks (`[rows][64]`), kept from one call to the next: made
    /// anew for each split of the work, fc1's (256 KB each) were allocated, faulted in and
    /// cleared on every step. The kernels write every value they read of them.
    static KEPT_SCRATCH: std::cell::RefCell<Vec<CacheAligned<[f32; BLOCK]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scratch blocks a thread keeps (the weight gradient takes two at a time, the input
/// gradient one: together at most 512 KB a thread for fc1).
const KEPT: usize = 2;

/// Runs `f` over `N` of this thread's scratch blocks, `rows[k]` rows each, holding whatever
/// an earlier call left in them.
fn with_scratch<const N: usize, R>(rows: [usize; N], f: impl FnOnce([&mut [[f32; BLOCK]]; N]) -> R) -> R {
    let mut taken: [CacheAligned<[f32; BLOCK]>; N] = KEPT_SCRATCH.with_borrow_mut(|kept| {
        // The smallest block that fits each.
        rows.map(|len| match (0..kept.len()).filter(|&at| kept[at].len() >= len).min_by_key(|&at| kept[at].len()) {
            Some(at) => kept.swap_remove(at),
            None => CacheAligned::here(len, [0.0; BLOCK]),
        })
    });
    let mut k = 0;
    let out = f(taken.each_mut().map(|block| {
        let block = &mut block[..rows[k]];
        k += 1;
        block
    }));
    KEPT_SCRATCH.with_borrow_mut(|kept| {
        kept.extend(taken);
        // The largest stay.
        kept.sort_by_key(|block| std::cmp::Reverse(block.len()));
        kept.truncate(KEPT);
    });
    out
}

/// Where a block of [`input_grad_into`] finds its weight values, `[j][64]`.
enum BlockWeight<'a> {
    /// `[r, j]`, `r <= 64`: the block's rows of a weight stored by rows, transposed into
    /// the scratch `block` (`[j][64]`) first.
    Transposed { rows: &'a [f32], j: usize, block: &'a mut [[f32; BLOCK]] },
    /// Read as they are: `j` rows of 64.
    Ready(Rows64<'a>),
}

/// One block of 64 columns of `g W^T`: the block's weight values (transposed first when
/// the weight is stored by rows), then every image's sums.
struct InputGradBlock<'a, 'b> {
    weight: BlockWeight<'a>,
    entries: &'a Entries,
    /// Each image's columns of the block in `dx` (`r <= 64` values each).
    out: &'a mut [&'b mut [f32]],
}

impl WithLanes for InputGradBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        // A weight stored by columns is read where it lies, 64 values of each stored row
        // 12.5 KB apart for fc1 (256 KB a block, in L2); by spans of 64 rows, those rows
        // stay in L1 while every image's entries in the span pass, and each image's sums
        // are added up over the spans (fc1 forward + backward as training stores it,
        // criterion: 3.80 against 3.92 ms, means of three). The transposed block of a
        // weight stored by rows, dense in 256 KB, by passes of [`TRANSPOSED_SPANS`] spans.
        let per_pass = if matches!(self.weight, BlockWeight::Ready(_)) { 1 } else { TRANSPOSED_SPANS };
        let table = match self.weight {
            BlockWeight::Transposed { rows, j, block } => {
                let r = rows.len() / j;
                transpose_into(lanes, rows, j, (r, j), block.as_flattened_mut(), BLOCK, false);
                if r < BLOCK {
                    // The last block: the scratch holds an earlier block's values past its rows.
                    block.iter_mut().for_each(|to| to[r..].fill(0.0));
                }
                Rows64::dense(block)
            }
            BlockWeight::Ready(table) => table,
        };
        let e = self.entries;
        // The first pass writes every value of `out` (which may hold anything before), the
        // others add to them.
        for first in (0..e.j.div_ceil(SPAN)).step_by(per_pass) {
            for (b, out) in self.out.iter_mut().enumerate() {
                let list = e.row_spans(b, first, per_pass);
                if list.is_empty() {
                    if first == 0 {
                        out.fill(0.0);
                    }
                    continue;
                }
                let sums = lanes.sum_list64(table, list);
                if first == 0 {
                    out.copy_from_slice(&sums[..out.len()]);
                } else {
                    for (o, s) in out.iter_mut().zip(&sums) {
                        *o += s;
                    }
                }
            }
        }
    }
}

/// One block of 64 rows of `x^T g`: every column's sums, then the columns transposed into
/// the rows. The sums are taken by spans of [`IMAGE_SPAN`] images, so that their inputs
/// (32 KB) stay in L1 while every column's entries of them pass; the whole block's (128 KB
/// at batch 512) came from L2. At fc1's shape, batch 512, two threads of an Intel Xeon,
/// least of eight: with AVX-512 8.8 to 8.9 ms in one pass, 9.2 to 9.6 by spans of 256
/// images, 6.5 to 7.1 by 128, 6.9 to 7.7 by 64; with AVX2 11.3 in one pass, 8.5 by 128.
struct WeightGradBlock<'a> {
    /// `[n][64]`: the block's inputs of every image, zero past the block's last row.
    inputs: &'a [[f32; BLOCK]],
    j: usize,
    /// Scratch, `[j][64]`.
    columns: &'a mut [[f32; BLOCK]],
    entries: &'a Entries,
    /// `[r, j]`, `r <= 64`: the block's rows of `dW`.
    out: &'a mut [f32],
}

impl WithLanes for WeightGradBlock<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let e = self.entries;
        let table = Rows64::dense(self.inputs);
        for (c, column) in self.columns.iter_mut().enumerate() {
            *column = lanes.sum_list64(table, e.column_span(c, 0));
        }
        for t in 1..e.n.div_ceil(IMAGE_SPAN) {
            for (c, column) in self.columns.iter_mut().enumerate() {
                let list = e.column_span(c, t);
                if list.is_empty() {
                    continue;
                }
                let sums = lanes.sum_list64(table, list);
                for (a, s) in column.iter_mut().zip(&sums) {
                    *a += s;
                }
            }
        }
        let rows = self.out.len() / self.j;
        transpose_into(lanes, self.columns.as_flattened(), BLOCK, (self.j, rows), self.out, self.j, true);
    }
}

/// Some rows of `x^T g`'s transpose ([`weight_grad_by_columns_into`]).
struct WeightGradRows<'a> {
    i: usize,
    /// `[n, i]`.
    x: &'a [f32],
    entries: &'a Entries,
    /// The first row (a column of `g`).
    first: usize,
    /// `[rows, i]`.
    out: &'a mut [f32],
}

impl WithLanes for WeightGradRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let (i, e) = (self.i, self.entries);
        let rows = self.out.len() / i;
        // The last block's columns, when it is shorter than 64.
        let mut partial = Vec::new();
        for start in (0..i).step_by(BLOCK) {
            let width = BLOCK.min(i - start);
            let table = if width == BLOCK {
                Rows64::columns(self.x, i, start)
            } else {
                partial.resize(e.n, [0.0; BLOCK]);
                copy_block(self.x, i, start, width, &mut partial);
                Rows64::dense(&partial)
            };
            for (r, out) in self.out.chunks_exact_mut(i).enumerate().take(rows) {
                let c = self.first + r;
                let sums = lanes.sum_list64(table, e.column(c));
                if width == BLOCK {
                    // Four 64-byte stores (a copy of the 256 bytes called `memcpy`).
                    let (to, _) = out[start..][..BLOCK].as_chunks_mut::<16>();
                    let (from, _) = sums.as_chunks::<16>();
                    for (to, from) in to.iter_mut().zip(from) {
                        *to = *from;
                    }
                } else {
                    out[start..][..width].copy_from_slice(&sums[..width]);
                }
            }
        }
    }
}

/// `to[k * to_stride + r] = from[r * from_stride + k]` for `r < rows`, `k < columns`: a
/// `rows x columns` matrix (rows `from_stride` apart) transposed into `to` (rows
/// `to_stride` apart). Whole 16 x 16 squares go through [`Lanes::transpose16`], the
/// edges value by value.
///
/// The squares are taken along stripes of 16 rows of the matrix in memory (fc1's weight
/// or its gradient, the other side being a block in L2): of `to` if `by_to_rows`, else of
/// `from`. Each row is then read or written from start to end while 16 rows are in
/// flight; the weight gradient's squares taken along `from`'s rows wrote 64 rows of `dW`
/// 64 bytes at a time (training at 50, AVX-512: 1.04-1.10x in five alternations).
#[inline(always)]
pub(super) fn transpose_into<L: Lanes>(lanes: L, from: &[f32], from_stride: usize, (rows, columns): (usize, usize), to: &mut [f32], to_stride: usize, by_to_rows: bool) {
    let (full_rows, full_columns) = (rows / 16 * 16, columns / 16 * 16);
    if by_to_rows {
        for c0 in (0..full_columns).step_by(16) {
            for r0 in (0..full_rows).step_by(16) {
                lanes.transpose16(&from[r0 * from_stride + c0..], from_stride, &mut to[c0 * to_stride + r0..], to_stride);
            }
        }
    } else {
        for r0 in (0..full_rows).step_by(16) {
            for c0 in (0..full_columns).step_by(16) {
                lanes.transpose16(&from[r0 * from_stride + c0..], from_stride, &mut to[c0 * to_stride + r0..], to_stride);
            }
        }
    }
    for r in 0..rows {
        let done = if r < full_rows { full_columns } else { 0 };
        for k in done..columns {
            to[k * to_stride + r] = from[r * from_stride + k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flex::lanes::{available, dispatch_with};

    /// `n x j` values, about `zeros` of them exactly zero, the rest in about [-2, 2].
    fn sparse(n: usize, j: usize, zeros: f64, seed: usize) -> Vec<f32> {
        (0..n * j)
            .map(|k| {
                let h = (k * 2_654_435_761 + seed * 40_503) % 1_000_003;
                if (h % 1000) as f64 / 1000.0 < zeros { 0.0 } else { (h % 401) as f32 / 100.0 - 2.0 }
            })
            .collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + b.abs())
    }

    /// The lists made in several tasks are the lists made in one (which the test below
    /// holds to their definition), entry for entry and offset for offset: shapes with and
    /// without whole spans of columns and of images, more tasks than rows or spans and
    /// fewer, densities from empty to full, NaN and -0.0, on pools of one to three threads.
    #[test]
    fn entries_in_any_number_of_tasks_are_those_in_one() {
        for (n, j, zeros) in [(512, 1024, 0.75), (50, 1024, 0.75), (3, 7, 0.5), (1, 1, 0.0), (5, 200, 1.0), (2 * IMAGE_SPAN + 9, 130, 0.6), (7, 64, 0.0), (300, 65, 0.9), (0, 5, 0.5), (4, 0, 0.5), (1, 1000, 0.7)] {
            let mut g = sparse(n, j, zeros, 9);
            if n * j > 10 {
                g[3] = f32::NAN;
                g[7] = -0.0;
            }
            for (threads, tasks) in [(1, 2), (2, 4), (3, 5), (2, 13)] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
                for density in [1.0, 0.4] {
                    // Compared bit for bit (a NaN is not equal to itself).
                    let bits = |e: Option<Entries>| {
                        e.map(|e| {
                            let entries = |list: &[(u32, f32)]| -> Vec<(u32, u32)> { list.iter().map(|&(i, v)| (i, v.to_bits())).collect() };
                            (e.n, e.j, entries(&e.by_row), e.span_starts, entries(&e.by_column), e.column_span_starts)
                        })
                    };
                    let want = bits(Entries::in_tasks(n, j, &g, density, 1));
                    let have = bits(pool.install(|| Entries::in_tasks(n, j, &g, density, tasks)));
                    assert!(have == want, "{:?}, {tasks} tasks on {threads} threads, density {density}", (n, j, zeros));
                }
            }
        }
    }

    #[test]
    fn entries_list_every_non_zero_value_by_row_and_by_column() {
        let (n, j) = (7, 13);
        let g = sparse(n, j, 0.7, 1);
        let e = Entries::of(n, j, &g, 1.0).expect("within density 1");
        let nonzero: Vec<(usize, usize, f32)> = (0..n * j).filter(|&k| g[k] != 0.0).map(|k| (k / j, k % j, g[k])).collect();
        assert_eq!(e.len(), nonzero.len());
        let rows: Vec<(usize, usize, f32)> = (0..n).flat_map(|b| e.row(b).iter().map(move |&(c, v)| (b, c as usize, v))).collect();
        assert_eq!(rows, nonzero);
        let mut columns: Vec<(usize, usize, f32)> = (0..j).flat_map(|c| e.column(c).iter().map(move |&(b, v)| (b as usize, c, v))).collect();
        // Each column's entries in row order.
        assert!((0..j).all(|c| e.column(c).windows(2).all(|w| w[0].0 < w[1].0)));
        columns.sort_by_key(|&(b, c, _)| (b, c));
        assert_eq!(columns, nonzero);
        // Each row's spans of 64 columns, in order, are its entries.
        let (n, j) = (3, 200);
        let g = sparse(n, j, 0.6, 5);
        let e = Entries::of(n, j, &g, 1.0).expect("within density 1");
        for b in 0..n {
            let spans: Vec<(u32, f32)> = (0..j.div_ceil(SPAN)).flat_map(|span| {
                let list = e.row_span(b, span);
                assert!(list.iter().all(|&(c, _)| c as usize / SPAN == span), "row {b}, span {span}: {list:?}");
                list.to_vec()
            }).collect();
            assert_eq!(spans, e.row(b));
            // And by passes of several spans.
            let passes: Vec<(u32, f32)> = (0..j.div_ceil(SPAN)).step_by(2).flat_map(|first| e.row_spans(b, first, 2).to_vec()).collect();
            assert_eq!(passes, e.row(b));
        }
        // Each column's spans of images, in order, are its entries: three spans, the last
        // one partial.
        let (n, j) = (2 * IMAGE_SPAN + 9, 7);
        let g = sparse(n, j, 0.3, 6);
        let e = Entries::of(n, j, &g, 1.0).expect("within density 1");
        for c in 0..j {
            let spans: Vec<(u32, f32)> = (0..3).flat_map(|t| {
                let list = e.column_span(c, t);
                assert!(!list.is_empty() && list.iter().all(|&(b, _)| b as usize / IMAGE_SPAN == t), "column {c}, span {t}: {list:?}");
                list.to_vec()
            }).collect();
            assert_eq!(spans, e.column(c));
        }
        // -0.0 is zero; too dense is refused; empty shapes are fine.
        assert_eq!(Entries::of(1, 3, &[-0.0, 1.0, 0.0], 0.5).map(|e| e.len()), Some(1));
        assert!(Entries::of(1, 3, &[2.0, 1.0, 0.0], 0.5).is_none());
        assert_eq!(Entries::of(0, 5, &[], 0.5).map(|e| e.len()), Some(0));
        assert_eq!(Entries::of(3, 0, &[], 0.5).map(|e| e.len()), Some(0));
    }

    /// Both products against their definitions, on shapes with remainders (rows not a
    /// multiple of 64 or of 16, odd lists) and densities from empty to full, with the
    /// instruction set this CPU runs (the inner kernel is held on every set below).
    #[test]
    fn sparse_products_match_their_definitions() {
        for (n, i, j, zeros) in [(3, 7, 10, 0.75), (50, 83, 33, 0.75), (1, 1, 1, 0.0), (5, 40, 17, 1.0), (9, 16, 64, 0.5), (6, 150, 70, 0.6), (4, 130, 200, 0.7), (2, 33, 5, 0.0), (0, 4, 3, 0.5), (4, 0, 3, 0.5), (3, 5, 0, 0.5), (7, 128, 40, 0.7), (3, 70, 600, 0.7), (260, 20, 9, 0.7), (300, 65, 300, 0.8)] {
            let g = sparse(n, j, zeros, 2);
            let x = sparse(n, i, 0.5, 3);
            let w = sparse(i, j, 0.0, 4);
            let e = Entries::of(n, j, &g, 1.0).expect("within density 1");
            // The weight stored by rows, and by columns (its transpose `[j, i]`).
            let w_t: Vec<f32> = (0..j * i).map(|k| w[(k % i) * j + k / i]).collect();
            for (layout, weight) in [("rows", Weight::Rows(&w)), ("columns", Weight::Columns(&w_t))] {
                // Over stale values (NaN): every value is written.
                let mut dx = vec![f32::NAN; n * i];
                input_grad_into(i, &e, weight, &mut dx);
                for b in 0..n {
                    for r in 0..i {
                        let expect: f32 = (0..j).map(|c| g[b * j + c] * w[r * j + c]).sum();
                        assert!(close(dx[b * i + r], expect), "{layout} {:?} dx[{b},{r}]: {} vs {expect}", (n, i, j), dx[b * i + r]);
                    }
                }
            }
            let mut dw = vec![f32::NAN; i * j];
            weight_grad_into(i, &x, &e, &mut dw);
            let mut dw_t = vec![f32::NAN; j * i];
            weight_grad_by_columns_into(i, &x, &e, &mut dw_t);
            for r in 0..i {
                for c in 0..j {
                    let expect: f32 = (0..n).map(|b| x[b * i + r] * g[b * j + c]).sum();
                    assert!(close(dw[r * j + c], expect), "{:?} dw[{r},{c}]: {} vs {expect}", (n, i, j), dw[r * j + c]);
                    assert!(close(dw_t[c * i + r], expect), "by columns {:?} dw[{r},{c}]: {} vs {expect}", (n, i, j), dw_t[c * i + r]);
                }
            }
        }
    }

    struct SumList<'a>(&'a [[f32; 64]], &'a [(u32, f32)]);
    impl WithLanes for SumList<'_> {
        type Output = [f32; 64];
        #[inline(always)]
        fn run<L: Lanes>(self, lanes: L) -> [f32; 64] {
            lanes.sum_list64(Rows64::dense(self.0), self.1)
        }
    }

    struct Transpose<'a>(&'a [f32], usize, (usize, usize), usize);
    impl WithLanes for Transpose<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn run<L: Lanes>(self, lanes: L) -> Vec<f32> {
            let Transpose(from, from_stride, (rows, columns), to_stride) = self;
            let mut to = vec![f32::NAN; columns * to_stride];
            // Both orders of the squares, by the shapes' row counts (even: along `to`'s rows).
            transpose_into(lanes, from, from_stride, (rows, columns), &mut to, to_stride, rows % 2 == 0);
            to
        }
    }

    /// Transposes of every shape the kernels make (16 rows, 16 columns, fewer, more, and
    /// strides wider than the matrix) on every instruction set: whole squares and edges.
    #[test]
    fn every_instruction_set_transposes_alike() {
        for (rows, columns, from_stride, to_stride) in [(16, 16, 16, 16), (16, 40, 40, 16), (5, 37, 37, 16), (48, 16, 16, 50), (33, 9, 16, 33), (1, 1, 1, 1), (0, 16, 16, 16), (64, 40, 40, 64), (19, 33, 33, 64), (40, 19, 64, 40)] {
            let from: Vec<f32> = (0..rows * from_stride).map(|v| v as f32).collect();
            for simd in available() {
                let to = dispatch_with(simd, Transpose(&from, from_stride, (rows, columns), to_stride));
                for k in 0..columns {
                    for r in 0..to_stride {
                        let want = if r < rows { from[r * from_stride + k] } else { f32::NAN };
                        let have = to[k * to_stride + r];
                        assert!(have == want || (have.is_nan() && want.is_nan()), "{simd} {:?} [{k}][{r}]: {have} vs {want}", (rows, columns, from_stride, to_stride));
                    }
                }
            }
        }
    }

    /// The inner kernel, the same on every instruction set within rounding.
    #[test]
    fn every_instruction_set_sums_the_same_lists() {
        let table: Vec<[f32; 64]> = (0..37).map(|r| std::array::from_fn(|l| ((r * 64 + l) * 7919 % 613) as f32 / 97.0 - 3.0)).collect();
        for len in [0, 1, 3, 4, 5, 11, 64] {
            let list: Vec<(u32, f32)> = (0..len).map(|k| ((k * 13 % 37) as u32, (k as f32) / 3.0 - 1.5)).collect();
            let expect: [f32; 64] = std::array::from_fn(|l| list.iter().map(|&(r, g)| g * table[r as usize][l]).sum());
            for simd in available() {
                let out = dispatch_with(simd, SumList(&table, &list));
                assert!(out.iter().zip(&expect).all(|(a, b)| close(*a, *b)), "{simd}, {len} entries: {out:?} vs {expect:?}");
            }
        }
    }
}
