// The sparse path's layout, in one workgroup: where each feature's list starts (an
// exclusive scan of the list sizes over every head and feature, in order) and the total at
// lists[H * M]; then lists[FLAG_AT] says which path the step takes: 1 (sparse) when the
// lists fit in CAP entries, else 0 (dense). Every later kernel of either path reads it,
// so the choice is made on the device, from the batch alone, with no read-back.
@group(0) @binding(0) var<storage, read_write> lcount: array<u32>; // [H * M]
@group(0) @binding(1) var<storage, read_write> lists: array<u32>;  // [H * M + 2]

var<workgroup> part: array<u32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) li: u32) {
    let n = H * M;
    let per = (n + 255u) / 256u;
    let lo = min(li * per, n);
    let hi = min(lo + per, n);
    var s = 0u;
    for (var i = lo; i < hi; i++) {
        s += lcount[i];
    }
    part[li] = s;
    workgroupBarrier();
    if (li == 0u) {
        var acc = 0u;
        for (var t = 0u; t < 256u; t++) {
            let v = part[t];
            part[t] = acc;
            acc += v;
        }
        lists[n] = acc;
        lists[FLAG_AT] = select(0u, 1u, acc <= CAP);
    }
    workgroupBarrier();
    var o = part[li];
    for (var i = lo; i < hi; i++) {
        lists[i] = o;
        o += lcount[i];
    }
}
