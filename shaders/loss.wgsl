// The batch's loss terms, in one workgroup: each head's summed squared error, then
// [mse, sparsity, total] (sparsity: sum_i f_i n_i per token, or the L0 for JumpReLU).
// Tree reductions in a fixed order. terms[3] is the path the step took (1: sparse).
@group(0) @binding(0) var<storage, read_write> err_sq: array<f32>;       // [H, B]
@group(0) @binding(1) var<storage, read_write> fired: array<f32>;        // [H, M]
@group(0) @binding(2) var<storage, read_write> fsum: array<f32>;         // [H, M]
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;        // [H, M]
@group(0) @binding(4) var<storage, read_write> resid: array<f32>;  // [H]
@group(0) @binding(5) var<storage, read_write> terms: array<f32>;  // [4]
@group(0) @binding(6) var<storage, read_write> sc: array<f32>;           // step scalars

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) li: u32) {
    var mse = 0.0;
    var sparsity = 0.0;
    for (var h = 0u; h < H; h++) {
        var s = 0.0;
        for (var b = li; b < B; b += 256u) {
            s += err_sq[h * B + b];
        }
        let head = reduce(li, s);
        if (li == 0u) {
            resid[h] = head;
        }
        mse += head;
        var p = 0.0;
        for (var i = li; i < M; i += 256u) {
            if (ACT == ACT_JUMP) {
                p += fired[h * M + i];
            } else {
                p += fsum[h * M + i] * norms[h * M + i];
            }
        }
        sparsity += reduce(li, p);
    }
    if (li == 0u) {
        mse *= INV_B;
        sparsity *= INV_B;
        terms[3] = f32(path_taken());
        terms[0] = mse;
        terms[1] = sparsity;
        if (ACT == ACT_RELU || ACT == ACT_JUMP) {
            terms[2] = mse + sc[SC_COEF] * sparsity;
        } else {
            terms[2] = mse;
        }
    }
}
