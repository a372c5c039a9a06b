// AuxK: the pre-activations of the dead features; every other entry far below any real
// one, so a row's selection takes dead features only (where a head has fewer dead
// features than AuxK's k, the selection's threshold falls to that value and ReLU zeroes
// what it lets through). One invocation per entry.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;      // [H, B, M]
@group(0) @binding(1) var<storage, read_write> dead: array<f32>;     // [H, M], 1: dead
@group(0) @binding(2) var<storage, read_write> masked: array<f32>;  // [H, B, M]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let b = id.y;
    let h = id.z;
    if (i >= M) {
        return;
    }
    let at = (h * B + b) * M + i;
    masked[at] = select(-3.4028235e38, pre[at], dead[h * M + i] == 1.0);
}
