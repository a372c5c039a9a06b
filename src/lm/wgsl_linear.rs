//! The LM's products `x W (+ b)` on wgpu through the SAE step's tiled matmul
//! (`shaders/matmul.wgsl` with `shaders/mm_linear.wgsl`) instead of burn's autotuned one: an
//! experiment for a GPU, behind `ATTN_SAES_LM_MATMUL=wgsl`, measured by
//! `scripts/gpu-check.sh` before it becomes a default or goes. Each output sums its `K`
//! products in order, in f32.

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceKernel};
use burn::backend::{Backend, backend_extension};
use burn::cubecl::server::KernelArguments;
use burn::cubecl::{CubeCount, CubeDim};
use burn::prelude::*;
use burn::tensor::{DType, Shape};

use crate::train::wgsl::{NO_PATH_FLAG, Wgsl, groups, matmul_body, matmul_constants, sources};

/// Outputs per invocation of the 16 x 16 workgroup (the step's wide tiles: 128 x 128).
const TILE: (usize, usize) = (8, 8);

/// `x W + b` as a backend operation: CubeCL runtimes (wgpu), directly or under fusion.
#[backend_extension(Cube, Fusion)]
pub trait WgslLinear: Backend {
    /// `x` `[N, K]` times `w` `[K, C]`, plus `bias` `[C]` when `with_bias`.
    #[fusion(dtype = x, shape = product_shape(x, w))]
    fn wgsl_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        with_bias: bool,
    ) -> FloatTensor<Self>;
}

fn product_shape(x: &Shape, w: &Shape) -> Shape {
    Shape::from(vec![x[0], w[1]])
}

impl WgslLinear for CubeBackend {
    fn wgsl_linear(x: CubeTensor, w: CubeTensor, bias: CubeTensor, with_bias: bool) -> CubeTensor {
        let x = burn::backend::wgpu::into_contiguous(x);
        let bias = burn::backend::wgpu::into_contiguous(bias);
        let (n, k, c) = (x.meta.shape()[0], x.meta.shape()[1], w.meta.shape()[1]);
        // W as stored when it can be read so: row-major, or the transpose of a row-major
        // `[C, K]`; otherwise a contiguous copy.
        let strides = w.meta.strides().to_vec();
        let (w, k_fast) = if strides == [c, 1] {
            (w, false)
        } else if strides == [1, k] {
            (w, true)
        } else {
            (burn::backend::wgpu::into_contiguous(w), false)
        };
        let client = x.client.clone();
        let y = CubeTensor::new_contiguous(
            client.clone(),
            x.device.clone(),
            Shape::from(vec![n, c]),
            client.empty((n * c).max(1) * 4),
            DType::F32,
        );
        let source = format!(
            "const N: u32 = {n}u;\nconst K: u32 = {k}u;\nconst C: u32 = {c}u;\n\
             const KSPLIT: u32 = 1u;\nconst KS: u32 = {k}u;\n\
             const B_K_FAST: bool = {k_fast};\nconst HAS_BIAS: bool = {with_bias};\n\
             {NO_PATH_FLAG}{}{}\n{}",
            matmul_constants(TILE),
            sources::MM_LINEAR,
            matmul_body(TILE)
        );
        let buffers = [&x, &w, &bias, &y]
            .iter()
            .map(|t| t.handle.clone().binding())
            .collect();
        client.launch(
            Box::new(SourceKernel::new(
                Wgsl::new(source),
                CubeDim::new_2d(16, 16),
            )),
            CubeCount::Static(groups(c, 16 * TILE.1), groups(n, 16 * TILE.0), 1),
            KernelArguments::new().with_buffers(buffers),
        );
        y
    }
}

/// Whether an `[n, k] x [k, c]` product on `device` goes through [`WgslLinear`]: asked for
/// (`ATTN_SAES_LM_MATMUL=wgsl`), on wgpu, not under autodiff, and indexed within 32 bits.
pub fn wanted(device: &Device, (n, k, c): (usize, usize, usize)) -> bool {
    // Read once: every product of every forward asks.
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| std::env::var("ATTN_SAES_LM_MATMUL").as_deref() == Ok("wgsl"))
        && *device != Device::flex()
        && !device.is_autodiff()
        && [n * k, k * c, n * c].iter().all(|&len| len < 1 << 32)
}

/// `x` `[N, K]` times `w` `[K, C]` (f32), plus `b` `[C]`, through [`WgslLinear`] on wgpu.
pub fn linear(x: Tensor<2>, w: &Tensor<2>, b: Option<&Tensor<1>>) -> Tensor<2> {
    let device = x.device();
    let bias = match b {
        Some(b) => b.clone(),
        None => Tensor::<1>::zeros([1], &device),
    };
    Tensor::from_dispatch(<burn::backend::Dispatch as WgslLinear>::wgsl_linear(
        x.into_dispatch(),
        w.clone().into_dispatch(),
        bias.into_dispatch(),
        b.is_some(),
    ))
}
