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

/// DFA of `feature` of SAE block `block` at `target` by source position `0..=target`, one
/// per model head of the block (`heads` of them, `d_head` wide each: one head for a
/// block-diagonal SAE, all of them for a dense one), each from that head's rows of the
/// feature's encoder column (`w_enc` is `[blocks, heads d_head, m]`), its pattern row at
/// the target (`pattern_row(model_head)`) and its value vectors (`value(model_head, s)`).
/// Their sum ([`sum_parts`]) is the block's DFA.
pub fn dfa_by_head<'v>(
    w_enc: &[f32],
    (block, feature, m): (usize, usize, usize),
    (heads, d_head): (usize, usize),
    pattern_row: impl Fn(usize) -> &'v [f32],
    value: impl Fn(usize, usize) -> &'v [f32],
    scale: f32,
    target: usize,
) -> Vec<Vec<f32>> {
    let width = heads * d_head;
    (0..heads)
        .map(|g| {
            let mh = block * heads + g;
            let enc_col: Vec<f32> = (0..d_head)
                .map(|k| w_enc[(block * width + g * d_head + k) * m + feature])
                .collect();
            dfa_by_source(pattern_row(mh), |s| value(mh, s), &enc_col, scale, target)
        })
        .collect()
}

/// Each part ([`dfa_by_head`]'s, one per model head) summed over the sources: a dense
/// block's DFA by head; empty for a single part (a block-diagonal SAE's head).
pub fn part_sums(parts: &[Vec<f32>]) -> Vec<f32> {
    match parts.len() {
        1 => Vec::new(),
        _ => parts.iter().map(|part| part.iter().sum()).collect(),
    }
}

/// The element-wise sum of `parts`, each of length `n`.
pub fn sum_parts(parts: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut sum = vec![0f32; n];
    for part in parts {
        sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    sum
}
