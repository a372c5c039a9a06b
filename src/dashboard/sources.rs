//! Where features read from: a summary of the DFA of each feature's top examples.
//!
//! For one top example, the source position with the largest attribution is put in one of
//! a few kinds by where it lies relative to the target and which token it holds (the
//! patterns Kissane et al. name attention features by): the first token (BOS, where heads
//! park attention), the target itself, the previous token, the token after an earlier copy
//! of the target's token (induction), an earlier copy of the target's token (duplicate
//! token), or another position. A feature's kind is the one most of its top examples share;
//! with no majority it is mixed. A head's summary counts its features by kind.
//!
//! Computed from the dashboard file alone (no burn), so every viewer and the `features`
//! report show the same, for files written before it too.

use half::f16;

use super::format::{ExampleGroup, FeatureData, HeadData};

/// Where an example's largest-attribution source lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Position 0 of the window (BOS).
    First,
    /// The target position itself.
    Current,
    /// The position before the target.
    Previous,
    /// The position after an earlier occurrence of the target's token.
    Induction,
    /// An earlier occurrence of the target's token.
    Duplicate,
    /// Anywhere else.
    Other,
}

impl SourceKind {
    /// Every kind, in the order tables show them.
    pub const ALL: [SourceKind; 6] = [
        SourceKind::Previous,
        SourceKind::Induction,
        SourceKind::Duplicate,
        SourceKind::Current,
        SourceKind::First,
        SourceKind::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SourceKind::First => "first token",
            SourceKind::Current => "itself",
            SourceKind::Previous => "previous token",
            SourceKind::Induction => "induction",
            SourceKind::Duplicate => "duplicate token",
            SourceKind::Other => "elsewhere",
        }
    }

    /// The kind in a few letters, for lists and tables.
    pub fn short(self) -> &'static str {
        match self {
            SourceKind::First => "first",
            SourceKind::Current => "itself",
            SourceKind::Previous => "prev",
            SourceKind::Induction => "induction",
            SourceKind::Duplicate => "dup",
            SourceKind::Other => "elsewhere",
        }
    }

    /// What the kind means, for tooltips and help.
    pub fn description(self) -> &'static str {
        match self {
            SourceKind::First => "position 0 of the window (BOS)",
            SourceKind::Current => "the target position itself",
            SourceKind::Previous => "the position just before the target",
            SourceKind::Induction => "the token after an earlier copy of the target's token",
            SourceKind::Duplicate => "an earlier copy of the target's token",
            SourceKind::Other => "any other position",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

/// The kind of source `source` for the target `target` of `window` (token ids). The
/// first rule that holds wins, in the order of [`SourceKind`]'s variants.
pub fn classify(window: &[u32], target: usize, source: usize) -> SourceKind {
    let token = |p: usize| window.get(p).copied();
    if source == 0 {
        SourceKind::First
    } else if source == target {
        SourceKind::Current
    } else if source + 1 == target {
        SourceKind::Previous
    } else if source < target && token(source - 1).is_some() && token(source - 1) == token(target) {
        SourceKind::Induction
    } else if source < target && token(source).is_some() && token(source) == token(target) {
        SourceKind::Duplicate
    } else {
        SourceKind::Other
    }
}

/// The source with the largest positive attribution (the first of equals), and its share
/// of the positive attribution. `None` when no source raises the feature. Values are taken
/// as the file stores them (f16), so the builder's figures and a viewer's agree.
pub fn top_source(dfa: &[f32]) -> Option<(usize, f32)> {
    let stored = |v: f32| f16::from_f32(v).to_f32();
    let positive: f32 = dfa.iter().map(|&v| stored(v)).filter(|v| *v > 0.0).sum();
    let (at, top) = dfa
        .iter()
        .map(|&v| stored(v))
        .enumerate()
        .filter(|(_, v)| *v > 0.0)
        .fold(None, |best: Option<(usize, f32)>, (p, v)| match best {
            Some((_, b)) if v <= b => best,
            _ => Some((p, v)),
        })?;
    Some((at, top / positive))
}

/// One feature's summary over its top examples with DFA.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FeatureSources {
    /// Top examples by the kind of their top source, in [`SourceKind::ALL`]'s order.
    pub counts: [u32; 6],
    /// Mean share of the positive attribution at the top source (0 without examples).
    pub share: f32,
    /// The token most often at the top source (the first of equals by id) and in how
    /// many examples.
    pub token: Option<(u32, u32)>,
}

impl FeatureSources {
    /// Examples counted.
    pub fn examples(&self) -> u32 {
        self.counts.iter().sum()
    }

    pub fn count(&self, kind: SourceKind) -> u32 {
        self.counts[kind.index()]
    }

    /// The kind more than half the examples share, if one does.
    pub fn main(&self) -> Option<SourceKind> {
        let n = self.examples();
        SourceKind::ALL.into_iter().find(|&k| 2 * self.count(k) > n)
    }

    /// "previous token in 17 of 20 top examples (elsewhere 3); the top source holds 84% of
    /// the positive DFA on average", or "mixed: ..." without a majority.
    pub fn describe(&self) -> String {
        let n = self.examples();
        if n == 0 {
            return "nowhere: no top example with a positive attribution".into();
        }
        let mut parts: Vec<(SourceKind, u32)> = SourceKind::ALL
            .into_iter()
            .map(|k| (k, self.count(k)))
            .filter(|p| p.1 > 0)
            .collect();
        // Stable: equal counts keep the table order.
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let list = |parts: &[(SourceKind, u32)]| {
            parts
                .iter()
                .map(|(k, c)| format!("{} {c}", k.label()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let head = match self.main() {
            Some(k) => {
                let rest: Vec<_> = parts.iter().copied().filter(|p| p.0 != k).collect();
                let rest = if rest.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", list(&rest))
                };
                format!(
                    "{} in {} of {n} top examples{rest}",
                    k.label(),
                    self.count(k)
                )
            }
            None => format!("mixed: {} of {n} top examples", list(&parts)),
        };
        format!(
            "{head}; the top source holds {:.0}% of the positive DFA on average",
            100.0 * self.share
        )
    }
}

/// A feature's summary: for each top example with DFA, its top source's kind and token.
/// Examples whose window is missing from `windows` are skipped.
pub fn feature_sources(windows: &[Vec<u32>], fd: &FeatureData) -> FeatureSources {
    let mut out = FeatureSources::default();
    let mut tokens: Vec<u32> = Vec::new();
    let mut share = 0.0f64;
    for e in &fd.examples {
        if e.group != ExampleGroup::Top {
            continue;
        }
        let Some(window) = windows.get(e.window as usize) else {
            continue;
        };
        let Some((source, s)) = top_source(&e.dfa) else {
            continue;
        };
        let Some(&token) = window.get(source) else {
            continue;
        };
        out.counts[classify(window, e.target as usize, source).index()] += 1;
        share += s as f64;
        tokens.push(token);
    }
    let n = out.examples();
    if n > 0 {
        out.share = (share / n as f64) as f32;
    }
    tokens.sort_unstable();
    out.token = tokens
        .chunk_by(|a, b| a == b)
        .map(|run| (run[0], run.len() as u32))
        .fold(None, |best: Option<(u32, u32)>, t| match best {
            Some(b) if t.1 <= b.1 => best,
            _ => Some(t),
        });
    out
}

/// A head's features by their main kind.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadSources {
    /// Features whose top examples mostly share a kind, in [`SourceKind::ALL`]'s order.
    pub counts: [u32; 6],
    /// Features with top examples but no majority kind.
    pub mixed: u32,
}

impl HeadSources {
    /// Features counted (those with a top example with a positive attribution).
    /// Summed wide: a summary read from a (hostile) file may hold any counts.
    pub fn features(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum::<u64>() + self.mixed as u64
    }

    pub fn count(&self, kind: SourceKind) -> u32 {
        self.counts[kind.index()]
    }

    /// The positional pattern most of its features follow (the largest kind but
    /// "elsewhere"; the first of equals in table order) and its share of the features.
    pub fn top_pattern(&self) -> Option<(SourceKind, f64)> {
        let n = self.features();
        let (kind, count) = SourceKind::ALL
            .into_iter()
            .filter(|&k| k != SourceKind::Other)
            .map(|k| (k, self.count(k)))
            .fold(
                (SourceKind::Other, 0),
                |best, g| if g.1 > best.1 { g } else { best },
            );
        (count > 0).then(|| (kind, count as f64 / n as f64))
    }

    /// "previous token 62%, elsewhere 20%, ... (of 480 features)" (groups by share).
    pub fn describe(&self) -> String {
        let n = self.features();
        if n == 0 {
            return "no feature with a positive attribution".into();
        }
        let mut parts: Vec<(&str, u32)> = SourceKind::ALL
            .into_iter()
            .map(|k| (k.label(), self.count(k)))
            .chain([("mixed", self.mixed)])
            .filter(|p| p.1 > 0)
            .collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let list: Vec<String> = parts
            .iter()
            .map(|(k, c)| format!("{k} {}", percent(*c, n)))
            .collect();
        format!("{} (of {n} features)", list.join(", "))
    }
}

/// Adds the attention row of `target` (`row[s]` for the sources `0..=target`) to `mass` by
/// the sources' kinds: where a head attends, in the terms features are described in.
pub fn add_attention(window: &[u32], row: &[f32], target: usize, mass: &mut [f64; 6]) {
    for (s, &a) in row.iter().enumerate().take(target + 1) {
        mass[classify(window, target, s).index()] += a as f64;
    }
}

/// A head's mean attention from a token to each kind of source, over the dashboard's
/// tokens (BOS targets excluded): where it attends on that text, beside where its
/// features read from ([`HeadSources`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadAttention {
    /// In [`SourceKind::ALL`]'s order; sums to 1 over the kinds.
    pub mass: [f64; 6],
}

impl HeadAttention {
    pub fn share(&self, kind: SourceKind) -> f64 {
        self.mass[kind.index()]
    }

    /// "79% on the first token; of the rest: elsewhere 48%, previous token 24%, ..."
    /// (heads park most attention on BOS, whose value carries little, so the rest is told
    /// apart).
    pub fn describe(&self) -> String {
        let first = self.share(SourceKind::First);
        let rest = (1.0 - first).max(0.0);
        let mut parts: Vec<(SourceKind, f64)> = SourceKind::ALL
            .into_iter()
            .filter(|&k| k != SourceKind::First)
            .map(|k| (k, self.share(k)))
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let list: Vec<String> = parts
            .iter()
            .map(|(k, v)| format!("{} {:.0}%", k.label(), 100.0 * v / rest.max(1e-12)))
            .collect();
        format!(
            "{:.0}% on the first token; of the rest: {}",
            100.0 * first,
            list.join(", ")
        )
    }
}

/// One head's mean attention on repeated random tokens (BOS + R + R) to the previous token,
/// the first token and itself, and in the second copy to the earlier copy of its token
/// (duplicate) and to the token after it (induction). Computed by `lm::head_scores` (the
/// `heads` command); the dashboard file keeps it per head.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadScores {
    pub previous: f64,
    pub first: f64,
    pub current: f64,
    pub duplicate: f64,
    pub induction: f64,
}

impl HeadScores {
    /// "previous token 0.23, first token 0.38, itself 0.14, duplicate token 0.00,
    /// induction 0.00".
    pub fn describe(&self) -> String {
        format!(
            "previous token {:.2}, first token {:.2}, itself {:.2}, duplicate token {:.2}, \
             induction {:.2}",
            self.previous, self.first, self.current, self.duplicate, self.induction
        )
    }
}

/// `part` of `whole` as a whole percentage, "<1%" for a part too small to round to 1.
fn percent(part: u32, whole: u64) -> String {
    let p = 100.0 * part as f64 / whole.max(1) as f64;
    if part > 0 && p < 0.5 {
        "<1%".into()
    } else {
        format!("{p:.0}%")
    }
}

/// Counts `head`'s features by [`FeatureSources::main`].
pub fn head_sources(windows: &[Vec<u32>], head: &HeadData) -> HeadSources {
    let reads: Vec<FeatureSources> = head
        .features
        .iter()
        .map(|fd| feature_sources(windows, fd))
        .collect();
    HeadSources::of(&reads)
}

impl HeadSources {
    /// Counts features already summarised ([`feature_sources`]) by [`FeatureSources::main`];
    /// those without a counted example are left out.
    pub fn of(reads: &[FeatureSources]) -> Self {
        let mut out = HeadSources::default();
        for s in reads.iter().filter(|s| s.examples() > 0) {
            match s.main() {
                Some(k) => out.counts[k.index()] += 1,
                None => out.mixed += 1,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::format::Example;

    // Window: BOS a b c a ? ...   positions 0..
    const W: [u32; 8] = [0, 10, 11, 12, 10, 13, 11, 14];

    #[test]
    fn kinds_by_position_and_token() {
        // Target 4 holds token 10, as position 1 does.
        assert_eq!(classify(&W, 4, 0), SourceKind::First);
        assert_eq!(classify(&W, 4, 4), SourceKind::Current);
        assert_eq!(classify(&W, 4, 3), SourceKind::Previous);
        // Position 2 follows the earlier copy of token 10 at 1.
        assert_eq!(classify(&W, 4, 2), SourceKind::Induction);
        assert_eq!(classify(&W, 4, 1), SourceKind::Duplicate);
        // Target 6 holds 11, as position 2 does; 3 follows it, 1 is neither.
        assert_eq!(classify(&W, 6, 3), SourceKind::Induction);
        assert_eq!(classify(&W, 6, 2), SourceKind::Duplicate);
        assert_eq!(classify(&W, 6, 1), SourceKind::Other);
        // Previous wins over induction: source 2 is before target 3 and follows a copy of it.
        assert_eq!(classify(&[0, 14, 14, 14], 3, 2), SourceKind::Previous);
        // A later source (never in a DFA) is other, and positions past the window too.
        assert_eq!(classify(&W, 4, 6), SourceKind::Other);
        assert_eq!(classify(&W, 20, 9), SourceKind::Other);
    }

    #[test]
    fn attention_adds_up_by_kind() {
        // Target 4 (token 10) of W: sources 0 first, 1 duplicate, 2 induction, 3 previous,
        // 4 itself; a longer row is cut at the target.
        let mut mass = [0.0; 6];
        add_attention(&W, &[0.5, 0.1, 0.2, 0.15, 0.05, 9.0], 4, &mut mass);
        add_attention(&W, &[1.0], 0, &mut mass);
        let a = HeadAttention { mass };
        let close = |k: SourceKind, v: f64| (a.share(k) - v).abs() < 1e-6;
        assert!(close(SourceKind::First, 0.5 + 1.0));
        assert!(close(SourceKind::Duplicate, 0.1));
        assert!(close(SourceKind::Induction, 0.2));
        assert!(close(SourceKind::Previous, 0.15));
        assert!(close(SourceKind::Current, 0.05));
        assert!(close(SourceKind::Other, 0.0));
        let half = HeadAttention {
            mass: [0.25, 0.0, 0.0, 0.0, 0.5, 0.25],
        };
        assert_eq!(
            half.describe(),
            "50% on the first token; of the rest: previous token 50%, elsewhere 50%, \
             induction 0%, duplicate token 0%, itself 0%"
        );
    }

    #[test]
    fn top_source_takes_the_largest_positive_and_its_share() {
        assert_eq!(top_source(&[0.5, -2.0, 1.5, 0.0]), Some((2, 0.75)));
        // Equal values: the first.
        assert_eq!(top_source(&[1.0, 1.0]), Some((0, 0.5)));
        assert_eq!(top_source(&[-1.0, 0.0]), None);
        // As stored: 1.0001 and 1.0 are one f16, so the first wins, as in a viewer.
        assert_eq!(top_source(&[1.0, 1.0001]), Some((0, 0.5)));
        assert_eq!(top_source(&[]), None);
    }

    fn top(window: u32, target: u16, dfa: Vec<f32>) -> Example {
        Example {
            group: ExampleGroup::Top,
            window,
            target,
            activation: 1.0,
            activations: vec![(target, 1.0)],
            dfa,
            dfa_by_head: Vec::new(),
        }
    }

    fn feature(examples: Vec<Example>) -> FeatureData {
        FeatureData {
            density: 0.1,
            max_activation: 1.0,
            activation_histogram: vec![],
            interval_counts: vec![],
            logit_top: vec![],
            logit_bottom: vec![],
            logit_histogram: vec![],
            logit_range: (0.0, 0.0),
            effect: None,
            cofiring: vec![],
            upstream: None,
            examples,
        }
    }

    #[test]
    fn a_feature_is_what_most_of_its_examples_are() {
        let windows = vec![W.to_vec()];
        let mut interval = top(0, 4, vec![0.0, 0.0, 0.0, 0.0, 9.0]);
        interval.group = ExampleGroup::Interval(0);
        let fd = feature(vec![
            // previous (3 of 4 of the positive DFA), previous (all), induction (2/3), and
            // examples that do not count: no positive DFA, a window the file lacks, an
            // interval group's.
            top(0, 4, vec![0.5, 0.0, 0.0, 1.5, 0.0]),
            top(0, 6, vec![0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -1.0]),
            top(0, 4, vec![0.0, 0.0, 2.0, 1.0, 0.0]),
            top(0, 4, vec![-1.0; 5]),
            top(3, 4, vec![1.0; 5]),
            interval,
        ]);
        let s = feature_sources(&windows, &fd);
        assert_eq!(s.examples(), 3);
        assert_eq!(s.count(SourceKind::Previous), 2);
        assert_eq!(s.count(SourceKind::Induction), 1);
        assert_eq!(s.main(), Some(SourceKind::Previous));
        assert!((s.share - (0.75 + 1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-6);
        // Tokens at the top sources: 12 (position 3), 13 (5), 11 (2): one each, the first.
        assert_eq!(s.token, Some((11, 1)));
        assert_eq!(
            s.describe(),
            "previous token in 2 of 3 top examples (induction 1); the top source holds 81% of \
             the positive DFA on average"
        );

        // Half is no majority.
        let fd = feature(vec![
            top(0, 4, vec![0.0, 0.0, 0.0, 1.0, 0.0]),
            top(0, 4, vec![0.0, 1.0, 0.0, 0.0, 0.0]),
        ]);
        let s = feature_sources(&windows, &fd);
        assert_eq!(s.main(), None);
        assert!(
            s.describe()
                .starts_with("mixed: previous token 1, duplicate token 1 of 2 ")
        );
        // Two examples reading token 10 at position 1 (duplicate): the token counts twice.
        let fd = feature(vec![
            top(0, 4, vec![0.0, 1.0, 0.0, 0.0, 0.0]),
            top(0, 4, vec![0.0, 3.0, 0.0, 1.0, 0.0]),
            top(0, 6, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
        ]);
        let s = feature_sources(&windows, &fd);
        assert_eq!(s.main(), Some(SourceKind::Duplicate));
        assert_eq!(s.token, Some((10, 2)));
    }

    #[test]
    fn a_head_counts_its_features_by_main_kind() {
        let windows = vec![W.to_vec()];
        let prev = || top(0, 4, vec![0.0, 0.0, 0.0, 1.0, 0.0]);
        let dup = || top(0, 4, vec![0.0, 1.0, 0.0, 0.0, 0.0]);
        let head = HeadData {
            decoder: None,
            features: vec![
                feature(vec![prev(), prev()]),
                feature(vec![prev(), dup(), prev()]),
                feature(vec![dup(), prev()]),
                feature(vec![dup()]),
                feature(vec![]),
            ],
        };
        let h = head_sources(&windows, &head);
        assert_eq!(h.features(), 4);
        assert_eq!(h.count(SourceKind::Previous), 2);
        assert_eq!(h.count(SourceKind::Duplicate), 1);
        assert_eq!(h.mixed, 1);
        assert_eq!(
            h.describe(),
            "previous token 50%, duplicate token 25%, mixed 25% (of 4 features)"
        );
        assert_eq!(h.top_pattern(), Some((SourceKind::Previous, 0.5)));
        // Elsewhere and mixed are no pattern, however many.
        let other = HeadSources {
            counts: [0, 1, 0, 0, 0, 5],
            mixed: 4,
        };
        assert_eq!(other.top_pattern(), Some((SourceKind::Induction, 0.1)));
        let none = HeadSources {
            counts: [0, 0, 0, 0, 0, 5],
            mixed: 4,
        };
        assert_eq!(none.top_pattern(), None);
        assert_eq!(percent(1, 300), "<1%");
        // Counts a file could hold do not overflow.
        let huge = HeadSources {
            counts: [u32::MAX; 6],
            mixed: u32::MAX,
        };
        assert_eq!(huge.features(), 7 * u32::MAX as u64);
        assert!(huge.describe().starts_with("previous token 14%"));
        assert_eq!(percent(2, 300), "1%");
        assert_eq!(percent(0, 300), "0%");
    }
}
