// Totals of sums spread over many workgroups: each output's PARTS partials, laid out
// [PARTS, H, PER_HEAD], added in order (part 0 first), then the mode's `finish`
// (sum_plain.wgsl, sum_gdec.wgsl). One invocation per (output of a head, head).
@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    if (skip_dense(li)) {
        return;
    }
    let i = id.x;
    let h = id.y;
    if (i >= PER_HEAD) {
        return;
    }
    let at = h * PER_HEAD + i;
    var total = 0.0;
    for (var s = 0u; s < PARTS; s++) {
        total += part[s * H * PER_HEAD + at];
    }
    finish(h, i, at, total);
}
