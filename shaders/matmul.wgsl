// Tiled matmul body shared by the step's five products (mm_*.wgsl define the operands):
// C[h] (RD x CD) = A[h] (RD x KD) * B[h] (KD x CD), then `store` (each mode's epilogue).
// A workgroup owns a TM x TN tile of C; each of its 16 x 16 invocations sums RM x RN
// outputs (TM = 16 RM, TN = 16 RN: rows lid.y + 16 i, columns lid.x + 16 j) over K in a
// fixed order, so results do not depend on scheduling. A_K_FAST / B_K_FAST say which
// index of an operand is contiguous in memory, so that neighbouring invocations load
// neighbouring floats.
//
// The step's Rust side emits TM, TN, TK, SA, SB (row strides of the tiles in workgroup
// memory, padded by one so that a column written by neighbouring invocations falls in
// different banks) and writes out the lines marked `// {...}` for the invocation's
// RM x RN block: the accumulators (`acc_i_j`, vec4s of columns 4j..4j+3), one step of
// K, and the stores. Unrolled, they stay in registers on every compiler.
//
// Every storage buffer in shaders/ is declared read_write, inputs too: burn's memory pool
// places several tensors in one wgpu buffer, and wgpu refuses a dispatch that binds one
// buffer both read-only and read-write.

// A product over the batch (mm_gdec, mm_genc) may be split into KSPLIT partial products
// over ranges of KS rows, one range per workgroup along z with the head (`split`, which the
// mode's store writes by); every other product has KSPLIT 1 and KS >= KD.
var<private> split: u32;
var<workgroup> sa: array<f32, SA_LEN>; // [TK][SA]
var<workgroup> sb: array<f32, SB_LEN>; // [TK][SB]

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
            sa[ka * SA + rr] = v;
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
            sb[kb * SB + cc] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ra = kk * SA + lid.y;
            let rb = kk * SB + lid.x;
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
