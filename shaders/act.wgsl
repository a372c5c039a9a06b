// The activation, shared by every kernel that turns pre-activations into features.
// `gate` holds each row's threshold [H, B] (TopK, BatchTopK) or each feature's log-threshold
// [H, M] (JumpReLU); ReLU reads nothing from it.
fn gate_of(h: u32, b: u32, i: u32) -> f32 {
    if (ACT == ACT_JUMP) {
        return gate[h * M + i];
    }
    if (ACT == ACT_RELU) {
        return 0.0;
    }
    return gate[h * B + b];
}

// The feature of pre-activation `p`: ReLU; ReLU of what is at or above the row's (or
// head's) threshold; `p` above the feature's threshold `exp(g)` (JumpReLU).
fn act(p: f32, g: f32) -> f32 {
    if (ACT == ACT_JUMP) {
        return select(0.0, p, p > exp(g));
    }
    if (ACT == ACT_RELU) {
        return max(p, 0.0);
    }
    return select(0.0, max(p, 0.0), p >= g);
}
