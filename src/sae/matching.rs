//! How alike two block-diagonal SAEs of the same layer are: for each feature of one, the
//! feature of the same head in the other whose decoder direction is closest (cosine
//! similarity), and the mean of those maxima (MMCS, as Sharkey et al. compare dictionaries
//! across seeds and sizes). Features are compared within their head only: a head's
//! features live in that head's `d_head` space.

use burn::prelude::*;

use super::BlockDiagSae;

/// A feature's closest feature in the other SAE, and their decoder directions' cosine.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Closest {
    pub feature: u32,
    pub cosine: f32,
}

/// One head's matches both ways.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadMatch {
    pub head: usize,
    /// Per feature of the first SAE: its closest in the second.
    pub a_to_b: Vec<Closest>,
    /// Per feature of the second SAE: its closest in the first.
    pub b_to_a: Vec<Closest>,
}

/// Two SAEs' features matched head by head.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SaeMatch {
    pub heads: Vec<HeadMatch>,
}

/// Which way a match goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Each feature of the first SAE to its closest in the second.
    AToB,
    BToA,
}

impl HeadMatch {
    pub fn side(&self, direction: Direction) -> &[Closest] {
        match direction {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        }
    }
}

impl SaeMatch {
    /// The MMCS one way over every head, over the features `live` (`[head][feature]`)
    /// admits when given.
    pub fn mean_max(&self, direction: Direction, live: Option<&[Vec<bool>]>) -> Option<f64> {
        let flat: Vec<Closest> = (self.heads.iter())
            .flat_map(|h| h.side(direction).iter().copied())
            .collect();
        let keep: Option<Vec<bool>> = live.map(|l| l.concat());
        mean_max(&flat, keep.as_deref())
    }
}

/// The mean of `cosines` over the features `keep` admits (all without it), or `None` when
/// it admits none.
pub fn mean_max(list: &[Closest], keep: Option<&[bool]>) -> Option<f64> {
    let kept: Vec<f64> = (list.iter().enumerate())
        .filter(|(f, _)| keep.is_none_or(|k| k[*f]))
        .map(|(_, c)| c.cosine as f64)
        .collect();
    (!kept.is_empty()).then(|| kept.iter().sum::<f64>() / kept.len() as f64)
}

/// Rows of `[m, d]` scaled to unit length (a zero row stays zero).
fn unit_rows(w: Tensor<2>) -> Tensor<2> {
    let norm = w.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    w / norm
}

/// The `[m_a, m_b]` cosines of head `h`'s decoder rows, `a` against `b`.
fn cosines(a: &BlockDiagSae, b: &BlockDiagSae, h: usize) -> Tensor<2> {
    let rows = |s: &BlockDiagSae| {
        let [_, m, d] = s.w_dec.dims();
        unit_rows(
            s.w_dec
                .clone()
                .slice([h..h + 1, 0..m, 0..d])
                .reshape([m, d]),
        )
    };
    rows(a).matmul(rows(b).transpose())
}

/// Checks that `a` and `b` have the same heads of the same `d_head`.
fn same_heads(a: &BlockDiagSae, b: &BlockDiagSae) -> anyhow::Result<()> {
    let (ca, cb) = (&a.config, &b.config);
    // One dense block over the other's heads: the same layer, compared another way.
    if ca.is_dense_over(cb.n_heads, cb.d_head) || cb.is_dense_over(ca.n_heads, ca.d_head) {
        let heads = ca.n_heads.max(cb.n_heads);
        anyhow::bail!(
            "one SAE is dense (one block over all {heads} heads) and the other has a block per \
             head: matching compares features within a head, so it takes two block-diagonal \
             SAEs or two dense ones (a dense feature's dashboard says which heads it writes)"
        );
    }
    anyhow::ensure!(
        (ca.n_heads, ca.d_head) == (cb.n_heads, cb.d_head),
        "the SAEs read different layers: {} heads x d_head {} against {} x {}",
        ca.n_heads,
        ca.d_head,
        cb.n_heads,
        cb.d_head
    );
    Ok(())
}

/// Each feature's closest feature in the other SAE, both ways, head by head. The SAEs may
/// have different numbers of features a head, not different heads; both on one device.
pub fn match_saes(a: &BlockDiagSae, b: &BlockDiagSae) -> anyhow::Result<SaeMatch> {
    same_heads(a, b)?;
    let closest = |cos: Tensor<2>, dim: usize| -> anyhow::Result<Vec<Closest>> {
        let (values, indices) = cos.max_dim_with_indices(dim);
        let values = crate::files::host_vec(values)?;
        let indices: Vec<i64> = indices
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("reading indices back: {e:?}"))?;
        Ok((indices.into_iter().zip(values))
            .map(|(i, c)| Closest {
                feature: i as u32,
                cosine: c,
            })
            .collect())
    };
    let heads = (0..a.config.n_heads)
        .map(|h| {
            let cos = cosines(a, b, h);
            Ok(HeadMatch {
                head: h,
                a_to_b: closest(cos.clone(), 1)?,
                b_to_a: closest(cos, 0)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(SaeMatch { heads })
}

/// The `n` features of `b`'s head `head` closest to `a`'s feature `feature`, closest first.
pub fn closest_to(
    a: &BlockDiagSae,
    b: &BlockDiagSae,
    (head, feature): (usize, usize),
    n: usize,
) -> anyhow::Result<Vec<Closest>> {
    same_heads(a, b)?;
    let m = a.config.features_per_head;
    anyhow::ensure!(
        head < a.config.n_heads && feature < m,
        "head {head}, feature {feature}: the SAE has {} heads of {m} features",
        a.config.n_heads
    );
    let row = cosines(a, b, head).slice([feature..feature + 1, 0..b.config.features_per_head]);
    let cos = crate::files::host_vec(row)?;
    let mut order: Vec<usize> = (0..cos.len()).collect();
    order.sort_by(|&x, &y| cos[y].total_cmp(&cos[x]).then(x.cmp(&y)));
    Ok(order
        .into_iter()
        .take(n)
        .map(|f| Closest {
            feature: f as u32,
            cosine: cos[f],
        })
        .collect())
}
