// The threshold a selection of the NTH largest of SEG values ends with: the value of the
// picked key; +inf when nothing is kept (NTH = 0), -inf when everything is (NTH >= SEG).
fn threshold(picked: u32) -> f32 {
    if (NTH == 0u) {
        return bitcast<f32>(0x7f800000u);
    }
    if (NTH >= SEG) {
        return bitcast<f32>(0xff800000u);
    }
    return unkey(picked);
}
