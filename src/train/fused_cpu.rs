//! Fused ReLU-SAE training step for the CPU (the seed's loss: MSE plus decoder-norm-weighted
//! L1), written by hand instead of through burn's autodiff.
//!
//! Autodiff on the CPU materialises the `[H, B, m]` pre-activations, features and their
//! gradients several times per step; at the seed's size that is 400 MB per copy, and the
//! step becomes memory-bound. Here each (head, batch tile) runs forward and backward while
//! its tile of features is still in cache:
//!
//! ```text
//! P = X_t W_enc + b_enc        F = relu(P)        R = F W_dec + b_dec      E = R - X_t
//! dR = 2E / B                  dW_dec += F^T dR   db_dec += sum dR
//! dP = (dR W_dec^T + l1 n / B) * (P > 0)          dW_enc += X_t^T dP       db_enc += sum dP
//! ```
//!
//! and the decoder-norm term of the L1 gradient, `l1 / B * (sum_b f_i) W_dec[i] / n_i`, is
//! added once per step. Tiles whose features are sparse (a trained SAE fires a few percent
//! of its features) skip the dense products of the backward pass and the decoder: they
//! visit only the active features, so a step costs little more than the encoder's matmul.
//!
//! Work is split over heads (and over batch chunks when there are fewer heads than
//! threads); each job owns its gradient buffers and chunks are summed in a fixed order, so
//! results do not depend on scheduling. Adam and gradient clipping run on the host too.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Rows per tile: a tile's features (`TILE x m` floats) should stay in L2.
/// (16 to 256 rows measured within noise of each other at m = 512.)
const TILE: usize = 64;

/// Above this fraction of active features a tile uses dense matmuls.
const SPARSE_BELOW: f64 = 0.15;

/// Host copies of a ReLU SAE's parameters, in the layouts of `BlockDiagSae`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostParams {
    pub n_heads: usize,
    pub d_head: usize,
    pub m: usize,
    /// [H, d, m]
    pub w_enc: Vec<f32>,
    /// [H, m]
    pub b_enc: Vec<f32>,
    /// [H, m, d]
    pub w_dec: Vec<f32>,
    /// [H, d]
    pub b_dec: Vec<f32>,
}

impl HostParams {
    pub fn zeros_like(&self) -> Self {
        Self {
            w_enc: vec![0.0; self.w_enc.len()],
            b_enc: vec![0.0; self.b_enc.len()],
            w_dec: vec![0.0; self.w_dec.len()],
            b_dec: vec![0.0; self.b_dec.len()],
            ..*self
        }
    }

    pub fn arrays(&self) -> [&Vec<f32>; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }

    pub fn arrays_mut(&mut self) -> [&mut Vec<f32>; 4] {
        [
            &mut self.w_enc,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
        ]
    }
}

/// Loss terms and statistics of one batch.
#[derive(Clone, Debug)]
pub struct BatchSums {
    /// Mean over the batch of the summed squared error.
    pub mse: f64,
    /// Mean over the batch of `sum_h sum_i f_i ||W_dec[h][i]||`.
    pub sparsity: f64,
    /// Firings per feature, [H, m].
    pub fired: Vec<f32>,
    /// Summed squared error per head, [H].
    pub resid_sq: Vec<f64>,
    /// Squared norm of each token's reconstruction per head, [H, B].
    pub recon_sq: Vec<f32>,
}

/// Work buffers of one job (a head and a chunk of the batch): its gradients and sums.
struct Job {
    head: usize,
    rows: std::ops::Range<usize>,
    g: HostParams,
    fired: Vec<f32>,
    f_sum: Vec<f64>,
    resid_sq: f64,
    recon_sq: Vec<f32>,
}

/// Loss, gradients and batch sums of a ReLU SAE on `x` [H, B, d] (SAE input space), with
/// the decoder-norm-weighted L1 penalty times `l1`. Gradients are written into `grads`.
pub fn relu_loss_and_grads(
    p: &HostParams,
    x: &[f32],
    batch: usize,
    l1: f64,
    grads: &mut HostParams,
) -> BatchSums {
    loss_and_grads(p, x, batch, l1, grads, SPARSE_BELOW)
}

/// [`relu_loss_and_grads`] with the density below which tiles take the sparse path.
fn loss_and_grads(
    p: &HostParams,
    x: &[f32],
    batch: usize,
    l1: f64,
    grads: &mut HostParams,
    sparse_below: f64,
) -> BatchSums {
    let (h, d, m) = (p.n_heads, p.d_head, p.m);
    assert_eq!(x.len(), h * batch * d, "x must be [H, B, d]");
    let norms: Vec<f32> = p
        .w_dec
        .chunks_exact(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    // Jobs: every head, split into chunks when there are fewer heads than threads.
    let chunks = rayon::current_num_threads()
        .div_ceil(h)
        .clamp(1, batch.max(1));
    let chunk_rows = batch.div_ceil(chunks);
    let mut jobs: Vec<Job> = (0..h)
        .flat_map(|head| (0..chunks).map(move |c| (head, c)))
        .map(|(head, c)| {
            let r0 = (c * chunk_rows).min(batch);
            let r1 = ((c + 1) * chunk_rows).min(batch);
            Job {
                head,
                rows: r0..r1,
                g: HostParams {
                    n_heads: 1,
                    d_head: d,
                    m,
                    w_enc: vec![0.0; d * m],
                    b_enc: vec![0.0; m],
                    w_dec: vec![0.0; m * d],
                    b_dec: vec![0.0; d],
                },
                fired: vec![0.0; m],
                f_sum: vec![0.0; m],
                resid_sq: 0.0,
                recon_sq: vec![0.0; r1 - r0],
            }
        })
        .collect();
    jobs.par_iter_mut()
        .for_each(|job| run_job(p, x, batch, l1, &norms, sparse_below, job));

    // Reduce in a fixed order.
    let mut sums = BatchSums {
        mse: 0.0,
        sparsity: 0.0,
        fired: vec![0.0; h * m],
        resid_sq: vec![0.0; h],
        recon_sq: vec![0.0; h * batch],
    };
    *grads = p.zeros_like();
    let mut f_sum = vec![0f64; h * m];
    for job in &jobs {
        let hd = job.head;
        let add = |dst: &mut [f32], src: &[f32]| dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
        add(&mut grads.w_enc[hd * d * m..(hd + 1) * d * m], &job.g.w_enc);
        add(&mut grads.b_enc[hd * m..(hd + 1) * m], &job.g.b_enc);
        add(&mut grads.w_dec[hd * m * d..(hd + 1) * m * d], &job.g.w_dec);
        add(&mut grads.b_dec[hd * d..(hd + 1) * d], &job.g.b_dec);
        add(&mut sums.fired[hd * m..(hd + 1) * m], &job.fired);
        for (a, b) in f_sum[hd * m..(hd + 1) * m].iter_mut().zip(&job.f_sum) {
            *a += b;
        }
        sums.resid_sq[hd] += job.resid_sq;
        sums.recon_sq[hd * batch + job.rows.start..hd * batch + job.rows.end]
            .copy_from_slice(&job.recon_sq);
    }
    // The L1 term through the decoder norms: d n_i / d W_dec[i] = W_dec[i] / n_i.
    let inv_b = 1.0 / batch as f64;
    for ((g_row, w_row), (&s, &n)) in grads
        .w_dec
        .chunks_exact_mut(d)
        .zip(p.w_dec.chunks_exact(d))
        .zip(f_sum.iter().zip(&norms))
    {
        sums.sparsity += s * n as f64;
        if n > 0.0 && s != 0.0 {
            let c = (l1 * inv_b * s / n as f64) as f32;
            for (g, w) in g_row.iter_mut().zip(w_row) {
                *g += c * w;
            }
        }
    }
    sums.sparsity *= inv_b;
    sums.mse = sums.resid_sq.iter().sum::<f64>() * inv_b;
    sums
}

/// `dst[rows x cols] (+)= lhs[rows x k] * rhs[k x cols]`, all strided (row stride, column
/// stride), single-threaded (jobs are already parallel).
#[allow(clippy::too_many_arguments)]
fn matmul(
    rows: usize,
    cols: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(dst.len() >= rows * cols);
    assert!(lhs.len() > (rows - 1) * lhs_rs + (k.max(1) - 1) * lhs_cs || k == 0);
    assert!(rhs.len() > (k.max(1) - 1) * rhs_rs + (cols - 1) * rhs_cs || k == 0);
    // SAFETY: the bounds of all three matrices were checked above; dst does not alias
    // lhs or rhs (it is a distinct &mut slice).
    unsafe {
        gemm(
            rows,
            cols,
            k,
            dst.as_mut_ptr(),
            1,
            cols as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Runs a job with the widest vector instructions the CPU has. The crate is built for
/// baseline x86-64 (SSE2); the element-wise and sparse loops here are 2-4x faster with
/// AVX2 or AVX-512, so the job body is compiled three times and picked at run time.
/// (The matmuls dispatch on their own inside `gemm`.)
fn run_job(
    p: &HostParams,
    x: &[f32],
    batch: usize,
    l1: f64,
    norms: &[f32],
    sparse_below: f64,
    job: &mut Job,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512(
            p: &HostParams,
            x: &[f32],
            batch: usize,
            l1: f64,
            norms: &[f32],
            sparse_below: f64,
            job: &mut Job,
        ) {
            run_job_body(p, x, batch, l1, norms, sparse_below, job)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(
            p: &HostParams,
            x: &[f32],
            batch: usize,
            l1: f64,
            norms: &[f32],
            sparse_below: f64,
            job: &mut Job,
        ) {
            run_job_body(p, x, batch, l1, norms, sparse_below, job)
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
            // SAFETY: the features were detected on this CPU.
            return unsafe { avx512(p, x, batch, l1, norms, sparse_below, job) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(p, x, batch, l1, norms, sparse_below, job) };
        }
    }
    run_job_body(p, x, batch, l1, norms, sparse_below, job)
}

#[inline(always)]
fn run_job_body(
    p: &HostParams,
    x: &[f32],
    batch: usize,
    l1: f64,
    norms: &[f32],
    sparse_below: f64,
    job: &mut Job,
) {
    let (d, m, hd) = (p.d_head, p.m, job.head);
    let we = &p.w_enc[hd * d * m..(hd + 1) * d * m];
    let be = &p.b_enc[hd * m..(hd + 1) * m];
    let wd = &p.w_dec[hd * m * d..(hd + 1) * m * d];
    let bd = &p.b_dec[hd * d..(hd + 1) * d];
    let xh = &x[hd * batch * d..(hd + 1) * batch * d];
    let inv_b = 1.0 / batch as f32;
    // The L1 gradient per active feature: l1 * n_i / B.
    let l1_grad: Vec<f32> = norms[hd * m..(hd + 1) * m]
        .iter()
        .map(|&n| (l1 as f32) * n * inv_b)
        .collect();
    let tile = TILE;
    let mut feats = vec![0f32; tile * m];
    let mut dpre = vec![0f32; tile * m];
    let mut recon = vec![0f32; tile * d];
    let mut d_recon = vec![0f32; tile * d];
    let mut active: Vec<(u32, u32)> = Vec::new();
    let (mut f_tile, mut on_tile) = (vec![0f32; m], vec![0f32; m]);
    // dW_enc transposed ([m, d]) for sparse tiles, whose updates go by feature.
    let mut w_enc_t: Vec<f32> = Vec::new();
    let g = &mut job.g;
    let mut t0 = job.rows.start;
    while t0 < job.rows.end {
        let rows = tile.min(job.rows.end - t0);
        let xt = &xh[t0 * d..(t0 + rows) * d];
        let feats = &mut feats[..rows * m];
        let dpre = &mut dpre[..rows * m];
        let recon = &mut recon[..rows * d];
        let d_recon = &mut d_recon[..rows * d];
        // P = X_t W_enc, then bias, ReLU and the feature statistics.
        matmul(rows, m, d, feats, false, xt, (d, 1), we, (m, 1));
        // Branch-free, so it vectorises: a branch per feature mispredicts half the time
        // on a fresh SAE.
        for row in feats.chunks_exact_mut(m) {
            for (((v, &bias), on), fs) in row
                .iter_mut()
                .zip(be)
                .zip(on_tile.iter_mut())
                .zip(f_tile.iter_mut())
            {
                let f = (*v + bias).max(0.0);
                *v = f;
                *on += f32::from(f > 0.0);
                *fs += f;
            }
        }
        let mut n_active = 0f32;
        for (((acc, fs), fired), on) in job
            .f_sum
            .iter_mut()
            .zip(f_tile.iter_mut())
            .zip(job.fired.iter_mut())
            .zip(on_tile.iter_mut())
        {
            *acc += *fs as f64;
            *fired += *on;
            n_active += *on;
            (*fs, *on) = (0.0, 0.0);
        }
        let sparse = (n_active as f64) < sparse_below * (rows * m) as f64;
        active.clear();
        if sparse {
            find_active(feats, m, &mut active);
        }
        // R = F W_dec.
        if sparse {
            recon.fill(0.0);
            for &(b, i) in &active {
                let (b, i) = (b as usize, i as usize);
                let f = feats[b * m + i];
                axpy(f, &wd[i * d..(i + 1) * d], &mut recon[b * d..(b + 1) * d]);
            }
        } else {
            matmul(rows, d, m, recon, false, feats, (m, 1), wd, (d, 1));
        }
        // E = R + b_dec - X_t; dR = 2E / B.
        for b in 0..rows {
            let (mut rsq, mut esq) = (0f32, 0f32);
            for j in 0..d {
                let r = recon[b * d + j] + bd[j];
                let e = r - xt[b * d + j];
                rsq += r * r;
                esq += e * e;
                let dr = 2.0 * e * inv_b;
                d_recon[b * d + j] = dr;
                g.b_dec[j] += dr;
            }
            job.recon_sq[t0 - job.rows.start + b] = rsq;
            job.resid_sq += esq as f64;
        }
        if sparse {
            if w_enc_t.is_empty() {
                w_enc_t = vec![0f32; m * d];
            }
            // Only active features carry gradient: dW_dec[i] += f dR[b];
            // dP[b,i] = dR[b] . W_dec[i] + l1 n_i / B; dW_enc[:, i] += dP X_t[b].
            for &(b, i) in &active {
                let (b, i) = (b as usize, i as usize);
                let f = feats[b * m + i];
                let dr = &d_recon[b * d..(b + 1) * d];
                let w_row = &wd[i * d..(i + 1) * d];
                axpy(f, dr, &mut g.w_dec[i * d..(i + 1) * d]);
                let gp = dot(dr, w_row) + l1_grad[i];
                g.b_enc[i] += gp;
                // dW_enc^T row i, transposed into place after the loop.
                axpy(
                    gp,
                    &xt[b * d..(b + 1) * d],
                    &mut w_enc_t[i * d..(i + 1) * d],
                );
            }
        } else {
            // dW_dec += F^T dR.
            matmul(
                m,
                d,
                rows,
                &mut g.w_dec,
                true,
                feats,
                (1, m),
                d_recon,
                (d, 1),
            );
            // dP = (dR W_dec^T + l1 n / B) * (P > 0).
            matmul(rows, m, d, dpre, false, d_recon, (d, 1), wd, (1, d));
            mask_relu_grad(dpre, feats, &l1_grad, &mut g.b_enc);
            // dW_enc += X_t^T dP.
            matmul(d, m, rows, &mut g.w_enc, true, xt, (1, d), dpre, (m, 1));
        }
        t0 += rows;
    }
    if !w_enc_t.is_empty() {
        for (i, row) in w_enc_t.chunks_exact(d).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                g.w_enc[j * m + i] += v;
            }
        }
    }
}

/// Appends the `(row, feature)` of every positive entry of `feats` (rows of `m`), in row
/// order. With AVX-512 a compare gives 16 at once as a bit mask; portable code takes
/// about 0.5 ns per entry, as long as the rest of a sparse step.
fn find_active(feats: &[f32], m: usize, out: &mut Vec<(u32, u32)>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512(feats: &[f32], m: usize, out: &mut Vec<(u32, u32)>) {
            use std::arch::x86_64::{_CMP_GT_OQ, _mm512_cmp_ps_mask, _mm512_setzero_ps};
            let zero = _mm512_setzero_ps();
            for (b, row) in feats.chunks_exact(m).enumerate() {
                let chunks = row.chunks_exact(16);
                let tail = chunks.remainder();
                for (c, chunk) in chunks.enumerate() {
                    // SAFETY: `chunk` holds 16 floats.
                    let v = unsafe { std::arch::x86_64::_mm512_loadu_ps(chunk.as_ptr()) };
                    let mut bits = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, zero) as u32;
                    while bits != 0 {
                        out.push((b as u32, (c * 16) as u32 + bits.trailing_zeros()));
                        bits &= bits - 1;
                    }
                }
                let base = m - tail.len();
                for (k, &f) in tail.iter().enumerate() {
                    if f > 0.0 {
                        out.push((b as u32, (base + k) as u32));
                    }
                }
            }
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { avx512(feats, m, out) };
        }
    }
    for (b, row) in feats.chunks_exact(m).enumerate() {
        for (i, &f) in row.iter().enumerate() {
            if f > 0.0 {
                out.push((b as u32, i as u32));
            }
        }
    }
}

/// `dP = (G + l1_grad) * (F > 0)` in place over rows of `m`, summing `dP` into `gb`.
/// Multiplying by the mask instead of branching: a fresh SAE fires half its features at
/// random, and a branch per element mispredicted often enough to cost more than all five
/// matmuls together.
#[inline(always)]
fn mask_relu_grad(dpre: &mut [f32], feats: &[f32], l1_grad: &[f32], gb: &mut [f32]) {
    let m = l1_grad.len();
    for (grow, frow) in dpre.chunks_exact_mut(m).zip(feats.chunks_exact(m)) {
        for (((gp, &f), &c), gb) in grow.iter_mut().zip(frow).zip(l1_grad).zip(gb.iter_mut()) {
            let v = (*gp + c) * f32::from(f > 0.0);
            *gp = v;
            *gb += v;
        }
    }
}

#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Dot product with 16 independent partial sums, so it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Adam moments on the host, in the parameters' layouts.
#[derive(Clone, Debug)]
pub struct HostAdam {
    pub m: HostParams,
    pub v: HostParams,
}

impl HostAdam {
    pub fn zeros(p: &HostParams) -> Self {
        Self {
            m: p.zeros_like(),
            v: p.zeros_like(),
        }
    }
}

/// Clips the gradients' global norm to `clip` (`torch.nn.utils.clip_grad_norm_`: scale
/// `min(1, clip / (norm + 1e-6))`; no clipping when `clip <= 0`), then takes Adam step `t`
/// (PyTorch semantics, eps 1e-8).
pub fn clip_and_adam(
    p: &mut HostParams,
    grads: &HostParams,
    adam: &mut HostAdam,
    lr: f64,
    (b1, b2): (f64, f64),
    t: usize,
    clip: f64,
) {
    const BLOCK: usize = 1 << 14;
    let coef = if clip > 0.0 {
        let sq: f64 = grads
            .arrays()
            .iter()
            .map(|g| {
                g.par_chunks(BLOCK)
                    .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                    .collect::<Vec<f64>>()
                    .iter()
                    .sum::<f64>()
            })
            .sum();
        (clip / (sq.sqrt() + 1e-6)).min(1.0) as f32
    } else {
        1.0
    };
    let bc1 = (1.0 - b1.powi(t as i32)) as f32;
    let bc2 = (1.0 - b2.powi(t as i32)) as f32;
    let (b1, b2, lr) = (b1 as f32, b2 as f32, lr as f32);
    let [pm, pv] = [&mut adam.m, &mut adam.v];
    for (((param, g), m), v) in p
        .arrays_mut()
        .into_iter()
        .zip(grads.arrays())
        .zip(pm.arrays_mut())
        .zip(pv.arrays_mut())
    {
        param
            .par_chunks_mut(BLOCK)
            .zip(g.par_chunks(BLOCK))
            .zip(m.par_chunks_mut(BLOCK))
            .zip(v.par_chunks_mut(BLOCK))
            .for_each(|(((param, g), m), v)| {
                for (((p, &g), m), v) in param.iter_mut().zip(g).zip(m).zip(v) {
                    let g = g * coef;
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let denom = (*v / bc2).sqrt() + 1e-8;
                    *p -= (*m / bc1) / denom * lr;
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::sae::{Architecture, BlockDiagSae, SaeConfig};
    use burn::prelude::*;
    use burn::tensor::TensorData;

    fn host(t: Tensor<1>) -> Vec<f32> {
        crate::files::host_vec(t).unwrap()
    }

    fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        assert!(
            err <= tol * scale,
            "{name}: max error {err} (scale {scale})"
        );
    }

    /// Random SAE with biases set so that roughly `density` of the features fire.
    fn setup(h: usize, d: usize, m: usize, b: usize, bias: f32) -> (BlockDiagSae, Vec<f32>) {
        let device = Device::flex();
        let mut rng = Rng::new(7);
        let cfg = SaeConfig {
            n_heads: h,
            d_head: d,
            features_per_head: m,
            architecture: Architecture::Relu,
        };
        let mut sae = BlockDiagSae::init(cfg, &mut rng, &device);
        let b_enc: Vec<f32> = (0..h * m)
            .map(|_| bias + 0.05 * rng.normal() as f32)
            .collect();
        sae.b_enc = Tensor::from_data(TensorData::new(b_enc, [h, m]), &device);
        let b_dec: Vec<f32> = (0..h * d).map(|_| 0.1 * rng.normal() as f32).collect();
        sae.b_dec = Tensor::from_data(TensorData::new(b_dec, [h, d]), &device);
        let x: Vec<f32> = (0..h * b * d).map(|_| 3.0 * rng.normal() as f32).collect();
        (sae, x)
    }

    fn to_host(sae: &BlockDiagSae) -> HostParams {
        let c = &sae.config;
        HostParams {
            n_heads: c.n_heads,
            d_head: c.d_head,
            m: c.features_per_head,
            w_enc: host(sae.w_enc.clone().flatten(0, 2)),
            b_enc: host(sae.b_enc.clone().flatten(0, 1)),
            w_dec: host(sae.w_dec.clone().flatten(0, 2)),
            b_dec: host(sae.b_dec.clone().flatten(0, 1)),
        }
    }

    #[test]
    fn dense_and_sparse_tiles_match_burn_autodiff() {
        let (h, d, m, b) = (3, 16, 48, 150);
        for bias in [0.0f32, -0.25] {
            let (sae, x) = setup(h, d, m, b, bias);
            let device = Device::flex();
            let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [h, b, d]), &device);
            let l1 = 0.7;
            // Reference: burn autodiff on the same loss.
            let tracked = BlockDiagSae {
                w_enc: sae.w_enc.clone().autodiff().require_grad(),
                b_enc: sae.b_enc.clone().autodiff().require_grad(),
                w_dec: sae.w_dec.clone().autodiff().require_grad(),
                b_dec: sae.b_dec.clone().autodiff().require_grad(),
                ..sae.clone()
            };
            let (out, terms) = tracked.loss(xt.clone().autodiff(), l1);
            let grads = terms.total.backward();
            let want = HostParams {
                w_enc: host(tracked.w_enc.grad(&grads).unwrap().flatten(0, 2)),
                b_enc: host(tracked.b_enc.grad(&grads).unwrap().flatten(0, 1)),
                w_dec: host(tracked.w_dec.grad(&grads).unwrap().flatten(0, 2)),
                b_dec: host(tracked.b_dec.grad(&grads).unwrap().flatten(0, 1)),
                ..to_host(&sae)
            };
            let feats = host(out.feats.inner().flatten(0, 2));
            let recon = host(out.recon.inner().flatten(0, 2));
            let density = feats.iter().filter(|&&f| f > 0.0).count() as f64 / feats.len() as f64;
            let p = to_host(&sae);
            for sparse_below in [0.0, 2.0] {
                let mut g = p.zeros_like();
                let sums = loss_and_grads(&p, &x, b, l1, &mut g, sparse_below);
                let tag = format!("bias {bias} density {density:.2} sparse_below {sparse_below}");
                close(&format!("{tag} W_enc"), &g.w_enc, &want.w_enc, 2e-5);
                close(&format!("{tag} b_enc"), &g.b_enc, &want.b_enc, 2e-5);
                close(&format!("{tag} W_dec"), &g.w_dec, &want.w_dec, 2e-5);
                close(&format!("{tag} b_dec"), &g.b_dec, &want.b_dec, 2e-5);
                let mse = host(terms.mse.clone().inner())[0] as f64;
                let sparsity = host(terms.sparsity.clone().inner())[0] as f64;
                assert!(
                    (sums.mse - mse).abs() <= 1e-5 * mse,
                    "{tag} mse {} vs {mse}",
                    sums.mse
                );
                assert!(
                    (sums.sparsity - sparsity).abs() <= 1e-5 * sparsity,
                    "{tag} sparsity {} vs {sparsity}",
                    sums.sparsity
                );
                // Statistics against the features and reconstructions.
                for hd in 0..h {
                    for i in 0..m {
                        let n = (0..b)
                            .filter(|&t| feats[(hd * b + t) * m + i] > 0.0)
                            .count();
                        assert_eq!(sums.fired[hd * m + i], n as f32, "{tag} fired");
                    }
                    for t in 0..b {
                        let r = &recon[(hd * b + t) * d..(hd * b + t + 1) * d];
                        let want = r.iter().map(|v| v * v).sum::<f32>();
                        let got = sums.recon_sq[hd * b + t];
                        assert!((got - want).abs() <= 1e-4 * want.max(1.0), "{tag} recon_sq");
                    }
                }
            }
            assert!(density > 0.02 && density < 0.8, "density {density}");
        }
    }
}
