//! Direct feature attribution by source position, shared by the dashboard builder, the
//! desktop app's live analysis and the page's (no burn: it builds for every target).

/// DFA of one feature at `target` from every source `0..=target` of one window and head:
/// `A[target, s] * scale * (v_s . W_enc[:, f])`, so that the sum plus `b_enc[f]` is the
/// feature's pre-activation at `target`. `pattern` is the head's `[T, T]` rows of the
/// window, `value(s)` the head's value vector at `s`, `enc_col` the feature's encoder column.
/// The dashboard builder and the app's live analysis both compute DFA with it.
pub fn dfa_by_source<'v>(
    pattern_row: &[f32],
    value: impl Fn(usize) -> &'v [f32],
    enc_col: &[f32],
    scale: f32,
    target: usize,
) -> Vec<f32> {
    (0..=target)
        .map(|s| {
            let u: f32 = value(s).iter().zip(enc_col).map(|(a, b)| a * b).sum();
            pattern_row[s] * scale * u
        })
        .collect()
}
