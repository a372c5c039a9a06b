// The total itself (ksum.wgsl): column sums over the batch (colsum.wgsl's chunks), dW_enc
// (mm_genc.wgsl's ranges).
@group(0) @binding(0) var<storage, read_write> part: array<f32>;  // [PARTS, H, PER_HEAD]
@group(0) @binding(1) var<storage, read_write> out: array<f32>;   // [H, PER_HEAD]

fn finish(h: u32, i: u32, at: u32, v: f32) {
    out[at] = v;
}
