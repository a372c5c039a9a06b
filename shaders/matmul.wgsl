// Tiled matmul body shared by the step's five products (mm_*.wgsl define the operands):
// C[h] (RD x CD) = A[h] (RD x KD) * B[h] (KD x CD), then `store` (each mode's epilogue).
// A workgroup owns a 64 x 64 tile of C; each of its 256 invocations sums 4 x 4 outputs over
// K in a fixed order, so results do not depend on scheduling. A_K_FAST / B_K_FAST say which
// index of an operand is contiguous in memory, so that neighbouring invocations load
// neighbouring floats.
//
// Every storage buffer in shaders/ is declared read_write, inputs too: burn's memory pool
// places several tensors in one wgpu buffer, and wgpu refuses a dispatch that binds one
// buffer both read-only and read-write.
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;
// Row strides of the tiles in workgroup memory, padded by one so that a column written by
// neighbouring invocations falls in different banks.
const SA: u32 = 65u;
const SB: u32 = 65u;

var<workgroup> sa: array<f32, 1040>; // [TK][SA]
var<workgroup> sb: array<f32, 1040>; // [TK][SB]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    if (skip_dense(li)) {
        return;
    }
    let h = wg.z;
    let r0 = wg.y * TM;
    let c0 = wg.x * TN;
    // Accumulators in registers: row i of this invocation's 4 x 4 block is acc_i.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < KD; k0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = li + e * 256u;
            var rr = idx % TM;
            var ka = idx / TM;
            if (A_K_FAST) {
                ka = idx % TK;
                rr = idx / TK;
            }
            var v = 0.0;
            if (r0 + rr < RD && k0 + ka < KD) {
                v = load_a(h, r0 + rr, k0 + ka);
            }
            sa[ka * SA + rr] = v;
            var cc = idx % TN;
            var kb = idx / TN;
            if (B_K_FAST) {
                kb = idx % TK;
                cc = idx / TK;
            }
            var w = 0.0;
            if (c0 + cc < CD && k0 + kb < KD) {
                w = load_b(h, k0 + kb, c0 + cc);
            }
            sb[kb * SB + cc] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ra = kk * SA + lid.y;
            let rb = kk * SB + lid.x;
            let bv = vec4<f32>(sb[rb], sb[rb + 16u], sb[rb + 32u], sb[rb + 48u]);
            acc0 = fma(vec4<f32>(sa[ra]), bv, acc0);
            acc1 = fma(vec4<f32>(sa[ra + 16u]), bv, acc1);
            acc2 = fma(vec4<f32>(sa[ra + 32u]), bv, acc2);
            acc3 = fma(vec4<f32>(sa[ra + 48u]), bv, acc3);
        }
        workgroupBarrier();
    }
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + lid.y + 16u * i;
            let c = c0 + lid.x + 16u * j;
            if (r < RD && c < CD) {
                store(h, r, c, rows[i][j]);
            }
        }
    }
}
