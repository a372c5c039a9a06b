// The sum of one value from each of a workgroup's 256 invocations, as a tree in a fixed
// order; every invocation gets the total. Call from uniform control flow.
var<workgroup> part: array<f32, 256>;

fn reduce(li: u32, v: f32) -> f32 {
    part[li] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            part[li] += part[li + w];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}
