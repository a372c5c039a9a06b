// AuxK: in place, the pre-activations of live features sunk far below any real one, so
// that a row's selection takes dead features only (where a head has fewer dead features
// than AuxK's k, the selection's threshold falls to the sunk value and ReLU zeroes what it
// lets through). The loss's own kernels have read the pre-activations by now. One
// invocation per entry.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;   // [H, B, M]
@group(0) @binding(1) var<storage, read_write> dead: array<f32>;  // [H, M], 1: dead

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let b = id.y;
    let h = id.z;
    if (i >= M || dead[h * M + i] == 1.0) {
        return;
    }
    pre[(h * B + b) * M + i] = -3.4028235e38;
}
