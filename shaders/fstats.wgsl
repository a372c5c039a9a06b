// Per feature over one chunk of CHUNK_ROWS rows: how many tokens fire it, the sum of its
// activations (in row order), and how many entries its sparse list will hold (the firing
// ones, and for JumpReLU also those within half the bandwidth of the threshold). One
// invocation per (feature, head, chunk); fstats_total.wgsl adds the chunks in order.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;   // [H, B, M]
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;  // see act.wgsl
@group(0) @binding(2) var<storage, read_write> part: array<f32>;  // [3, H, NCH, M]
@group(0) @binding(3) var<storage, read_write> sc: array<f32>;    // step scalars

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let h = id.y;
    let ch = id.z;
    if (i >= M) {
        return;
    }
    var n = 0u;
    var listed = 0u;
    var s = 0.0;
    let b0 = ch * CHUNK_ROWS;
    for (var b = b0; b < min(b0 + CHUNK_ROWS, B); b++) {
        let p = pre[(h * B + b) * M + i];
        let g = gate_of(h, b, i);
        let f = act(p, g);
        s += f;
        n += select(0u, 1u, f > 0.0);
        if (f > 0.0 || is_near(p, g)) {
            listed += 1u;
        }
    }
    // Counts of at most CHUNK_ROWS, exact as floats.
    let at = (h * NCH + ch) * M + i;
    let q = H * NCH * M;
    part[at] = f32(n);
    part[q + at] = s;
    part[2u * q + at] = f32(listed);
}
