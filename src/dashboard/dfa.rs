//! Direct feature attribution by source position, shared by the dashboard builder, the
//! desktop app's live analysis and the page's (no burn: it builds for every target).

/// DFA of one feature at `target` from every source `0..=target` of one window and head:
/// `A[target, s] * scale * (v_s . W_enc[:, f])`, so that the sum plus `b_enc[f]` is the
/// feature's pre-activation at `target`. `pattern` is the head's `[T, T]` rows of the
/// window, `value(s)` the head's value vector at `s`, `enc_col` the feature's encoder column.
/// The app's live analysis computes DFA with it.
pub fn dfa_by_source<'v>(
    pattern_row: &[f32],
    value: impl Fn(usize) -> &'v [f32],
    enc_col: &[f32],
    scale: f32,
    target: usize,
) -> Vec<f32> {
    dfa_from_products(
        pattern_row,
        |s| value(s).iter().zip(enc_col).map(|(a, b)| a * b).sum(),
        scale,
        target,
    )
}

/// DFA as [`dfa_by_source`], from the products `u(s) = v_s . W_enc[:, f]` already made
/// (the dashboard builder makes them for many examples of a window at once).
pub fn dfa_from_products(
    pattern_row: &[f32],
    u: impl Fn(usize) -> f32,
    scale: f32,
    target: usize,
) -> Vec<f32> {
    (0..=target)
        .map(|s| pattern_row[s] * scale * u(s))
        .collect()
}
