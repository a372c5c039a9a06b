// Gradient clipping and Adam for one parameter array (PyTorch semantics, eps 1e-8): every
// workgroup sums the NP partial sums of squares in the same order for the global norm, then
// updates its 4096 values. The moments live in one buffer, m then v.
@group(0) @binding(0) var<storage, read_write> param: array<f32>;           // [N]
@group(0) @binding(1) var<storage, read_write> g: array<f32>;               // [N]
@group(0) @binding(2) var<storage, read_write> mv: array<f32>;              // [2 N]
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;        // [NP]
@group(0) @binding(4) var<storage, read_write> sc: array<f32>;              // step scalars
@group(0) @binding(5) var<storage, read_write> param_out: array<f32>; // [N]
@group(0) @binding(6) var<storage, read_write> mv_out: array<f32>;    // [2 N]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var i = li; i < NP; i += 256u) {
        s += partials[i];
    }
    let total = reduce(li, s);
    let clip = sc[SC_CLIP];
    var coef = 1.0;
    if (clip > 0.0) {
        coef = min(clip / (sqrt(total) + 1e-6), 1.0);
    }
    let lr = sc[SC_LR];
    let b1 = sc[SC_B1];
    let b2 = sc[SC_B2];
    let bc1 = sc[SC_BC1];
    let bc2 = sc[SC_BC2];
    for (var e = 0u; e < 16u; e++) {
        let i = wg.x * 4096u + e * 256u + li;
        if (i < N) {
            let gi = g[i] * coef;
            let m = mv[i] * b1 + gi * (1.0 - b1);
            let v = mv[N + i] * b2 + gi * gi * (1.0 - b2);
            mv_out[i] = m;
            mv_out[N + i] = v;
            let denom = sqrt(v / bc2) + 1e-8;
            param_out[i] = param[i] - (m / bc1) / denom * lr;
        }
    }
}
