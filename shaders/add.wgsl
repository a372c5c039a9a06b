// acc += v over N values (AuxK's gradients onto the loss's).
@group(0) @binding(0) var<storage, read_write> v: array<f32>;     // [N]
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;  // [N]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var e = 0u; e < 16u; e++) {
        let i = wg.x * 4096u + e * 256u + li;
        if (i < N) {
            acc[i] = acc[i] + v[i];
        }
    }
}
