// JumpReLU: whether `p` lies within half the bandwidth of the threshold `exp(g)`, where the
// threshold's straight-through gradient is taken (needs the step scalars `sc`).
fn is_near(p: f32, g: f32) -> bool {
    if (ACT != ACT_JUMP) {
        return false;
    }
    return abs(p - exp(g)) < sc[SC_HALF_BAND];
}
