// BatchTopK's threshold from many workgroups per head: one round of select.wgsl's radix
// selection, split over the batch. Workgroup (g, h) counts the next 8-bit digit of the keys
// in its CHUNK of head h's SEG pre-activations that match the digits picked so far
// (`sel`), then adds its counts to the head's 256 global ones; select_pick.wgsl picks the
// digit. Counts are integers, so the order of the atomic adds cannot change the result.
// The workgroup counts into COPIES histograms (an invocation's copy by its index) so that
// invocations whose keys share a digit, most of them in the first round, do not all wait
// on one atomic.
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;              // [H, SEG]
@group(0) @binding(1) var<storage, read_write> sel: array<u32>;              // [H, 4]
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;   // [H, 256]

const COPIES: u32 = 8u;
var<workgroup> hist: array<atomic<u32>, 2048>; // COPIES x 256

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let h = wg.y;
    // sel[h]: the digits picked so far, their mask, the rank still wanted, the round.
    let prefix = sel[h * 4u];
    let mask = sel[h * 4u + 1u];
    let shift = 24u - 8u * sel[h * 4u + 3u];
    for (var c = 0u; c < COPIES; c++) {
        atomicStore(&hist[c * 256u + li], 0u);
    }
    workgroupBarrier();
    let base = h * SEG;
    let hi = min((wg.x + 1u) * CHUNK, SEG);
    let copy = (li % COPIES) * 256u;
    for (var i = wg.x * CHUNK + li; i < hi; i += 256u) {
        let k = key(pre[base + i]);
        if ((k & mask) == prefix) {
            atomicAdd(&hist[copy + ((k >> shift) & 255u)], 1u);
        }
    }
    workgroupBarrier();
    var n = 0u;
    for (var c = 0u; c < COPIES; c++) {
        n += atomicLoad(&hist[c * 256u + li]);
    }
    if (n != 0u) {
        atomicAdd(&counts[h * 256u + li], n);
    }
}
