//! How each head of a layer attends, measured on repeated random tokens as
//! TransformerLens' head detector and the induction-head literature do: BOS, then random
//! tokens `R`, then `R` again. A head's scores are its mean attention from a position to
//! the previous token, the first token (BOS), itself, and, in the second copy, to the same
//! token in the first copy (duplicate) and to the token after it (induction). These depend
//! on the model alone; the dashboards set them beside where the SAE's features read from.

use super::transformer::{HookRequest, Transformer, TransformerConfig};
pub use crate::dashboard::sources::HeadScores;
use crate::rng::Rng;

/// Sequences and random tokens per copy the scores use by default.
pub const SEQUENCES: usize = 8;
pub const COPY_LEN: usize = 32;
/// The seed of the random tokens by default (the dashboards' too, so both give the same).
pub const SEED: u64 = 0;

/// The random sequences: BOS (when the model has one), `len` random tokens, the same again.
/// Tokens are drawn from the vocabulary without BOS, all different within a sequence when
/// the vocabulary allows, so that "an earlier copy" has one meaning.
pub fn repeated_sequences(
    d_vocab: usize,
    bos: Option<u32>,
    sequences: usize,
    len: usize,
    seed: u64,
) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..sequences)
        .map(|_| {
            let mut copy: Vec<u32> = Vec::with_capacity(len);
            while copy.len() < len {
                let t = rng.below(d_vocab) as u32;
                let fresh = !copy.contains(&t) || copy.len() + 1 >= d_vocab;
                if Some(t) != bos && fresh {
                    copy.push(t);
                }
            }
            let mut seq: Vec<u32> = bos.into_iter().collect();
            seq.extend(&copy);
            seq.extend(&copy);
            seq
        })
        .collect()
}

/// Random tokens per copy for a wish of `len`: what fits the context and the vocabulary.
pub fn copy_len(cfg: &TransformerConfig, len: usize) -> usize {
    let o = usize::from(cfg.bos_token_id.is_some());
    len.min(cfg.n_ctx.saturating_sub(o) / 2)
        .min(cfg.d_vocab.saturating_sub(o))
}

/// The scores of every head of `layer`, from `sequences` sequences of two copies of `len`
/// random tokens (shortened by [`copy_len`]).
pub fn head_scores(
    model: &Transformer,
    layer: usize,
    sequences: usize,
    len: usize,
    seed: u64,
) -> anyhow::Result<Vec<HeadScores>> {
    let mut all = layers_head_scores(model, &[layer], sequences, len, seed)?;
    Ok(all.remove(0))
}

/// [`head_scores`] for several layers from one forward pass, in the order of `layers`.
pub fn layers_head_scores(
    model: &Transformer,
    layers: &[usize],
    sequences: usize,
    len: usize,
    seed: u64,
) -> anyhow::Result<Vec<Vec<HeadScores>>> {
    let cfg = &model.config;
    let bos = cfg.bos_token_id;
    let o = usize::from(bos.is_some());
    anyhow::ensure!(
        len >= 2,
        "head scores need at least 2 random tokens per copy, not {len}"
    );
    let len = copy_len(cfg, len);
    anyhow::ensure!(
        len >= 2,
        "{}: a context of {} positions is too short for head scores",
        cfg.name,
        cfg.n_ctx
    );
    anyhow::ensure!(sequences >= 1, "head scores need at least one sequence");
    if let Some(&bad) = layers.iter().find(|&&l| l >= cfg.n_layers) {
        anyhow::bail!(
            "{} has layers 0 to {}, not {bad}",
            cfg.name,
            cfg.n_layers.saturating_sub(1)
        );
    }
    let seqs = repeated_sequences(cfg.d_vocab, bos, sequences, len, seed);
    let hooks = HookRequest {
        pattern: layers.to_vec(),
        ..Default::default()
    };
    let cache = model.run(model.tokens(&seqs)?, &hooks, None)?;
    layers
        .iter()
        .map(|layer| {
            let pattern = cache
                .pattern
                .get(layer)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no attention pattern for layer {layer}"))?;
            let [b, h, t, _] = pattern.dims();
            let a = crate::files::host_vec(pattern)?;
            Ok(scores_from_pattern(&a, [b, h, t], o, len))
        })
        .collect()
}

/// The scores from attention patterns `a` `[b, h, t, t]` of sequences holding `o` leading
/// tokens (BOS) and two copies of `len` random tokens.
pub fn scores_from_pattern(
    a: &[f32],
    [b, h, t]: [usize; 3],
    o: usize,
    len: usize,
) -> Vec<HeadScores> {
    let at =
        |seq: usize, head: usize, d: usize, s: usize| a[((seq * h + head) * t + d) * t + s] as f64;
    let mean = |head: usize, range: std::ops::Range<usize>, src: &dyn Fn(usize) -> usize| {
        let n = (b * range.len()) as f64;
        (0..b)
            .flat_map(|seq| range.clone().map(move |d| (seq, d)))
            .map(|(seq, d)| at(seq, head, d, src(d)))
            .sum::<f64>()
            / n
    };
    let second = o + len..o + 2 * len;
    (0..h)
        .map(|head| HeadScores {
            // From the second random token on, so the previous token is never BOS.
            previous: mean(head, o + 1..t, &|d| d - 1),
            first: mean(head, 1..t, &|_| 0),
            current: mean(head, 1..t, &|d| d),
            duplicate: mean(head, second.clone(), &|d| d - len),
            induction: mean(head, second.clone(), &|d| d - len + 1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Patterns that attend exactly where each score looks give that score 1 and the
    /// others what the layout implies.
    #[test]
    fn each_score_reads_its_own_source() {
        let (o, len) = (1, 5);
        let t = o + 2 * len;
        // Head 0 attends to the token after the earlier copy (induction) in the second
        // copy and to BOS before; head 1 to the earlier copy itself; head 2 to the previous
        // token; head 3 to itself.
        let h = 4;
        let mut a = vec![0f32; h * t * t];
        for d in 0..t {
            let second = d >= o + len;
            let rows = [
                if second { d - len + 1 } else { 0 },
                if second { d - len } else { 0 },
                d.saturating_sub(1),
                d,
            ];
            for (head, s) in rows.into_iter().enumerate() {
                a[(head * t + d) * t + s] = 1.0;
            }
        }
        let s = scores_from_pattern(&a, [1, h, t], o, len);
        assert_eq!(s[0].induction, 1.0);
        assert_eq!(s[0].duplicate, 0.0);
        assert_eq!(
            s[0].first,
            5.0 / 10.0,
            "positions 1..=5 of 1..=10 look at BOS"
        );
        assert_eq!(s[1].duplicate, 1.0);
        assert_eq!(s[1].induction, 0.0);
        assert_eq!(s[2].previous, 1.0);
        assert_eq!(s[2].induction, 0.0);
        assert_eq!(s[2].first, 1.0 / 10.0, "position 1's previous token is BOS");
        assert_eq!(s[3].current, 1.0);
        assert_eq!(s[3].previous, 0.0);
    }

    #[test]
    fn sequences_repeat_distinct_tokens_after_bos() {
        let seqs = repeated_sequences(50, Some(7), 3, 20, 1);
        for seq in &seqs {
            assert_eq!(seq.len(), 41);
            assert_eq!(seq[0], 7);
            assert_eq!(seq[1..21], seq[21..]);
            let mut copy = seq[1..21].to_vec();
            assert!(!copy.contains(&7));
            copy.sort_unstable();
            copy.dedup();
            assert_eq!(copy.len(), 20);
        }
        assert_ne!(seqs[0], seqs[1]);
    }
}
