// Tiled matmul body shared by the step's five products (mm_*.wgsl define the operands):
// C[h] (RD x CD) = A[h] (RD x KD) * B[h] (KD x CD), then `store` (each mode's epilogue).
// A workgroup owns a TM x TN tile of C; each of its 16 x 16 invocations sums RM x RN
// outputs (TM = 16 RM, TN = 16 RN: rows lid.y + 16 i, columns lid.x + 16 j) over K in a
// fixed order, so results do not depend on scheduling. A_K_FAST / B_K_FAST say which
// index of an operand is contiguous in memory, so that neighbouring invocations load
// neighbouring floats.
//
// The tiles sit in workgroup memory as vec4s, so that a step of K reads each invocation's
// operands with RM / 4 + RN / 4 vector loads rather than RM + RN scalar ones: at step k, the
// four rows (or columns) r, r + 16, r + 32, r + 48 of a block of 64 share the vec4 at
// `slot(k, r)`, component (r / 16) % 4, which is what one invocation reads together. The
// slot is XORed with k so that the stores of a column of A or B (the same row, successive
// k, by neighbouring invocations) fall in different banks without padding.
//
// The step's Rust side emits TM, TN, TK, TM4 and TN4 (TM / 4, TN / 4) and writes out the
// lines marked `// {...}` for the invocation's RM x RN block: the accumulators (`acc_i_j`:
// row lid.y + 16 i, the vec4 of columns lid.x + 16 (4 j + q) for q in 0..3), one step of
// K, and the stores. Unrolled, they stay in registers on every compiler.
//
// Every storage buffer in shaders/ is declared read_write, inputs too: burn's memory pool
// places several tensors in one wgpu buffer, and wgpu refuses a dispatch that binds one
// buffer both read-only and read-write.

// A product over the batch (mm_gdec, mm_genc) may be split into KSPLIT partial products
// over ranges of KS rows, one range per workgroup along z with the head (`split`, which the
// mode's store writes by); every other product has KSPLIT 1 and KS >= KD.
var<private> split: u32;
var<workgroup> sa: array<vec4<f32>, SA_LEN>; // [TK][TM4]
var<workgroup> sb: array<vec4<f32>, SB_LEN>; // [TK][TN4]

// Row (or column) r's vec4 in a tile's row of workgroup memory at step k of K (k < 16, so
// the XOR stays within the block of 16 slots).
fn slot(k: u32, r: u32) -> u32 {
    return ((r / 64u) * 16u + r % 16u) ^ k;
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    if (skip_dense(li)) {
        return;
    }
    let h = wg.z / KSPLIT;
    split = wg.z % KSPLIT;
    let k_lo = split * KS;
    let k_hi = min(k_lo + KS, KD);
    let r0 = wg.y * TM;
    let c0 = wg.x * TN;
    // {acc}
    for (var k0 = k_lo; k0 < k_hi; k0 += TK) {
        for (var e = 0u; e < TM * TK / 256u; e++) {
            let idx = li + e * 256u;
            var rr = idx % TM;
            var ka = idx / TM;
            if (A_K_FAST) {
                ka = idx % TK;
                rr = idx / TK;
            }
            var v = 0.0;
            if (r0 + rr < RD && k0 + ka < k_hi) {
                v = load_a(h, r0 + rr, k0 + ka);
            }
            sa[ka * TM4 + slot(ka, rr)][(rr / 16u) % 4u] = v;
        }
        for (var e = 0u; e < TN * TK / 256u; e++) {
            let idx = li + e * 256u;
            var cc = idx % TN;
            var kb = idx / TN;
            if (B_K_FAST) {
                kb = idx % TK;
                cc = idx / TK;
            }
            var w = 0.0;
            if (c0 + cc < CD && k0 + kb < k_hi) {
                w = load_b(h, k0 + kb, c0 + cc);
            }
            sb[kb * TN4 + slot(kb, cc)][(cc / 16u) % 4u] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            // slot(kk, lid.y + 64 i) = 16 i + (lid.y ^ kk), and so for the columns.
            let ra = kk * TM4 + (lid.y ^ kk);
            let rb = kk * TN4 + (lid.x ^ kk);
            // {step}
        }
        workgroupBarrier();
    }
    // {store}
}

fn put(h: u32, r: u32, c: u32, v: f32) {
    if (r < RD && c < CD) {
        store(h, r, c, v);
    }
}
