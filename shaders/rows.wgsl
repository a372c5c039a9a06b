// Per token: E = R - X; the squared error and squared reconstruction norm of the row; R is
// replaced in place by dR = 2 E / B. One invocation per (head, token).
@group(0) @binding(0) var<storage, read_write> x: array<f32>;            // [H, B, D]
@group(0) @binding(1) var<storage, read_write> rec: array<f32>;    // [H, B, D], R in, dR out
@group(0) @binding(2) var<storage, read_write> err_sq: array<f32>; // [H, B]
@group(0) @binding(3) var<storage, read_write> rec_sq: array<f32>; // [H, B]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let b = id.x;
    let h = id.y;
    if (b >= B) {
        return;
    }
    var esq = 0.0;
    var rsq = 0.0;
    let row = (h * B + b) * D;
    for (var j = 0u; j < D; j++) {
        let r = rec[row + j];
        let e = r - x[row + j];
        rsq = fma(r, r, rsq);
        esq = fma(e, e, esq);
        rec[row + j] = 2.0 * e * INV_B;
    }
    err_sq[h * B + b] = esq;
    rec_sq[h * B + b] = rsq;
}
