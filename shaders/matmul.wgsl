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
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
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
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = sa[kk * SA + lid.y + 16u * i];
                b[i] = sb[kk * SB + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + lid.y + 16u * i;
            let c = c0 + lid.x + 16u * j;
            if (r < RD && c < CD) {
                store(h, r, c, acc[i * 4u + j]);
            }
        }
    }
}
