// Column sums over the batch, first half: each chunk of CHUNK_ROWS rows summed in row order,
// part[chunk, h, c] = sum of v[h, b, c] over the chunk. One invocation per (column, head,
// chunk), so the whole batch is read at once; ksum.wgsl adds the chunks in order.
@group(0) @binding(0) var<storage, read_write> v: array<f32>;     // [H, B, N]
@group(0) @binding(1) var<storage, read_write> part: array<f32>;  // [NCH, H, N]

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    if (skip_dense(li)) {
        return;
    }
    let c = id.x;
    let h = id.y;
    let ch = id.z;
    if (c >= N) {
        return;
    }
    let b0 = ch * CHUNK_ROWS;
    var s = 0.0;
    for (var b = b0; b < min(b0 + CHUNK_ROWS, B); b++) {
        s += v[(h * B + b) * N + c];
    }
    part[(ch * H + h) * N + c] = s;
}
