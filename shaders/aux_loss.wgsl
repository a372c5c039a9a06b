// AuxK's term, in one workgroup: the mean over the batch of the scaled squared
// differences (aux_rows.wgsl), summed head by head in a fixed order; the loss (terms[2],
// written by loss.wgsl) gains coef times it.
@group(0) @binding(0) var<storage, read_write> aux_sq: array<f32>;  // [H, B]
@group(0) @binding(1) var<storage, read_write> aux: array<f32>;  // [1]
@group(0) @binding(2) var<storage, read_write> terms: array<f32>;  // [4]
@group(0) @binding(3) var<storage, read_write> factors: array<f32>;  // [2 H + 1]

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) li: u32) {
    var total = 0.0;
    for (var h = 0u; h < H; h++) {
        var s = 0.0;
        for (var b = li; b < B; b += 256u) {
            s += aux_sq[h * B + b];
        }
        total += reduce(li, s);
    }
    if (li == 0u) {
        let term = total * INV_B;
        aux[0] = term;
        terms[2] = terms[2] + factors[2u * H] * term;
    }
}
