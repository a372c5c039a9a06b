// After select_count.wgsl: one workgroup per head picks the round's digit from the head's
// 256 counts (the largest digit whose keys, with those of larger digits, reach the rank
// still wanted), records it in `sel` for the next round and zeroes the counts. After the
// fourth round the picked key is the head's NTH-largest pre-activation, the threshold,
// written to the REP slots of the head (one per token), as select.wgsl writes it; NTH = 0
// gives +inf and NTH >= SEG gives -inf.
@group(0) @binding(0) var<storage, read_write> sel: array<u32>;     // [H, 4]
@group(0) @binding(1) var<storage, read_write> counts: array<u32>;  // [H, 256]
@group(0) @binding(2) var<storage, read_write> thr: array<f32>;     // [H, REP]

var<workgroup> cnt: array<u32, 256>;
var<workgroup> picked: u32;
var<workgroup> last: u32;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let h = wg.y;
    // Each invocation reads and clears its own count: no other invocation touches it.
    cnt[li] = counts[h * 256u + li];
    counts[h * 256u + li] = 0u;
    workgroupBarrier();
    if (li == 0u) {
        let round = sel[h * 4u + 3u];
        let shift = 24u - 8u * round;
        let want = sel[h * 4u + 2u];
        var above = 0u;
        var digit = 0u;
        for (var d = 255i; d >= 0i; d--) {
            let n = cnt[u32(d)];
            if (above + n >= want) {
                digit = u32(d);
                break;
            }
            above += n;
        }
        let prefix = sel[h * 4u] | (digit << shift);
        sel[h * 4u] = prefix;
        sel[h * 4u + 1u] = sel[h * 4u + 1u] | (255u << shift);
        sel[h * 4u + 2u] = want - above;
        sel[h * 4u + 3u] = round + 1u;
        picked = prefix;
        last = select(0u, 1u, round == 3u);
    }
    let fin = workgroupUniformLoad(&last);
    if (fin == 1u) {
        let t = threshold(workgroupUniformLoad(&picked));
        for (var r = li; r < REP; r += 256u) {
            thr[h * REP + r] = t;
        }
    }
}
