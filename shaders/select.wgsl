// The NTH-largest value of each segment of SEG pre-activations (a token's row for TopK, a
// head's whole batch for BatchTopK), exactly, by radix selection on order-preserving keys:
// four passes of 8 bits, each counting the candidates' next digit in a workgroup histogram.
// The threshold is written to REP consecutive slots of `thr` (one per token of the segment).
// NTH = 0 gives +inf (nothing kept) and NTH >= SEG gives -inf (everything kept).
@group(0) @binding(0) var<storage, read_write> pre: array<f32>;        // segments of SEG
@group(0) @binding(1) var<storage, read_write> thr: array<f32>;  // REP per segment

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> pick: array<u32, 2>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let seg = wg.y * nwg.x + wg.x;
    let base = seg * SEG;
    var prefix = 0u;
    var mask = 0u;
    var want = NTH;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        atomicStore(&hist[li], 0u);
        workgroupBarrier();
        for (var i = li; i < SEG; i += 256u) {
            let k = key(pre[base + i]);
            if ((k & mask) == prefix) {
                atomicAdd(&hist[(k >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (li == 0u) {
            var above = 0u;
            var digit = 0u;
            for (var d = 255i; d >= 0i; d--) {
                let n = atomicLoad(&hist[u32(d)]);
                if (above + n >= want) {
                    digit = u32(d);
                    break;
                }
                above += n;
            }
            pick[0] = digit;
            pick[1] = want - above;
        }
        workgroupBarrier();
        prefix |= pick[0] << shift;
        mask |= 255u << shift;
        want = pick[1];
        workgroupBarrier();
    }
    let t = threshold(prefix);
    for (var r = li; r < REP; r += 256u) {
        thr[seg * REP + r] = t;
    }
}
