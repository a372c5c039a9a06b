// Y = X W (+ b), the LM's products: [N, K] x [K, C] (src/lm/wgsl_linear.rs, an experiment
// behind ATTN_SAES_LM_MATMUL=wgsl). W is read as stored: row-major [K, C], or (B_K_FAST) the
// transpose of a row-major [C, K], as an output matrix tied to the embedding is.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;     // [N, K]
@group(0) @binding(1) var<storage, read_write> w: array<f32>;     // [K, C] or [C, K]
@group(0) @binding(2) var<storage, read_write> bias: array<f32>;  // [C]; unread without one
@group(0) @binding(3) var<storage, read_write> y: array<f32>;     // [N, C]

const RD: u32 = N;
const CD: u32 = C;
const KD: u32 = K;
const A_K_FAST: bool = true;

fn load_a(h: u32, r: u32, k: u32) -> f32 {
    return x[r * K + k];
}

fn load_b(h: u32, k: u32, c: u32) -> f32 {
    if (B_K_FAST) {
        return w[c * K + k];
    }
    return w[k * C + c];
}

fn store(h: u32, r: u32, c: u32, v: f32) {
    var b = 0.0;
    if (HAS_BIAS) {
        b = bias[c];
    }
    y[r * C + c] = v + b;
}
