//! How alike two block-diagonal SAEs of the same layer are: for each feature of one, the
//! feature of the same head in the other whose decoder direction is closest (cosine
//! similarity), and the mean of those maxima (MMCS, as Sharkey et al. compare dictionaries
//! across seeds and sizes). Features are compared within their head only: a head's
//! features live in that head's `d_head` space.
//!
//! A dense SAE (one block over every head's hook_z) and a block-diagonal one of the same
//! layer are matched too ([`Across`]): head `h`'s features are then directions in the whole
//! hook_z, zero outside head `h`'s part, so each is compared with every dense feature and
//! each dense feature with every head's features.

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
    /// Set when one SAE is dense and the other block-diagonal (`heads` then has one entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub across: Option<Across>,
}

/// Which SAE of a match is the dense one, when one is dense and the other block-diagonal
/// over the same heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

/// A dense SAE matched against a block-diagonal one of the same layer: the match then has
/// one entry in `heads` (the dense SAE's one block), and the block-diagonal SAE's features
/// are numbered as in its dense form, head `h`'s feature `f` as `h * features_per_head + f`.
/// A feature of head `h` lives in head `h`'s part of hook_z (zero elsewhere), so its
/// cosine with a dense feature is their dot product over that part, over both full norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Across {
    /// Which SAE is dense.
    pub dense: Side,
    /// The block-diagonal SAE's heads.
    pub n_heads: usize,
    /// The block-diagonal SAE's features a head.
    pub features_per_head: usize,
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

impl Direction {
    /// The SAE a match this way starts from, and the one it finds features in.
    pub fn sides(self) -> (Side, Side) {
        match self {
            Direction::AToB => (Side::A, Side::B),
            Direction::BToA => (Side::B, Side::A),
        }
    }
}

impl Across {
    /// Feature `(block, f)` of `side` (block: its head, or 0 for the dense SAE) as an index
    /// into the match's one entry; `None` when there is no such block.
    pub fn index(&self, side: Side, (block, f): (usize, usize)) -> Option<usize> {
        match side == self.dense {
            true => (block == 0).then_some(f),
            false => (block < self.n_heads).then_some(block * self.features_per_head + f),
        }
    }

    /// An index into the match's one entry as feature `(block, f)` of `side`.
    pub fn feature(&self, side: Side, i: usize) -> (usize, usize) {
        match side == self.dense {
            true => (0, i),
            false => (i / self.features_per_head, i % self.features_per_head),
        }
    }
}

impl SaeMatch {
    /// Feature `(block, f)` of the SAE `direction` starts from, in that SAE's own numbering
    /// (block: the feature's head, or 0 in a dense SAE): the closest feature in the other
    /// SAE, in the other's numbering, and their cosine. `None` when the feature is not in
    /// the match.
    pub fn closest(
        &self,
        direction: Direction,
        (block, f): (usize, usize),
    ) -> Option<((usize, usize), f32)> {
        let (from, to) = direction.sides();
        let (entry, index) = match &self.across {
            Some(x) => (0, x.index(from, (block, f))?),
            None => (block, f),
        };
        let c = self.heads.get(entry)?.side(direction).get(index)?;
        let found = match &self.across {
            Some(x) => x.feature(to, c.feature as usize),
            None => (block, c.feature as usize),
        };
        Some((found, c.cosine))
    }

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

/// How `a` and `b` are matched: within each head when they have the same heads of the same
/// `d_head`, [`Across`] when one is a dense block over the other's heads, else an error.
fn pairing(a: &BlockDiagSae, b: &BlockDiagSae) -> anyhow::Result<Option<Across>> {
    let (ca, cb) = (&a.config, &b.config);
    let across = |dense, block: &super::SaeConfig| {
        Some(Across {
            dense,
            n_heads: block.n_heads,
            features_per_head: block.features_per_head,
        })
    };
    if ca.is_dense_over(cb.n_heads, cb.d_head) {
        return Ok(across(Side::A, cb));
    }
    if cb.is_dense_over(ca.n_heads, ca.d_head) {
        return Ok(across(Side::B, ca));
    }
    anyhow::ensure!(
        (ca.n_heads, ca.d_head) == (cb.n_heads, cb.d_head),
        "the SAEs read different layers: {} heads x d_head {} against {} x {}",
        ca.n_heads,
        ca.d_head,
        cb.n_heads,
        cb.d_head
    );
    Ok(None)
}

/// For each row of `cos` (`dim` 1) or each column (`dim` 0): the index of its largest
/// entry (the first of equals) and that entry.
fn closest(cos: Tensor<2>, dim: usize) -> anyhow::Result<Vec<Closest>> {
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
}

/// A dense SAE's decoder rows `[n, H d]` at unit length.
fn dense_unit_rows(dense: &BlockDiagSae) -> Tensor<2> {
    let [_, n, dd] = dense.w_dec.dims();
    unit_rows(dense.w_dec.clone().reshape([n, dd]))
}

/// The `[r, s]` cosines of unit dense rows `[r, H d]` with unit rows `[s, d]` of head `h`:
/// their dot products over head `h`'s part of the dense rows.
fn across_head(dense_unit: Tensor<2>, head_unit: Tensor<2>, h: usize) -> Tensor<2> {
    let [r, _] = dense_unit.dims();
    let [_, d] = head_unit.dims();
    (dense_unit.slice([0..r, h * d..(h + 1) * d])).matmul(head_unit.transpose())
}

/// Head `h`'s decoder rows of a block-diagonal SAE at unit length, `[m, d]`.
fn head_unit_rows(sae: &BlockDiagSae, h: usize) -> Tensor<2> {
    let [_, m, d] = sae.w_dec.dims();
    unit_rows(
        sae.w_dec
            .clone()
            .slice([h..h + 1, 0..m, 0..d])
            .reshape([m, d]),
    )
}

/// Each feature's closest feature in the other SAE, both ways: head by head, or across a
/// dense SAE and a block-diagonal one of the same layer ([`Across`]). The SAEs may have
/// different numbers of features a head, not different heads; both on one device.
pub fn match_saes(a: &BlockDiagSae, b: &BlockDiagSae) -> anyhow::Result<SaeMatch> {
    let Some(across) = pairing(a, b)? else {
        let heads = (0..a.config.n_heads)
            .map(|h| {
                let cos = head_unit_rows(a, h).matmul(head_unit_rows(b, h).transpose());
                Ok(HeadMatch {
                    head: h,
                    a_to_b: closest(cos.clone(), 1)?,
                    b_to_a: closest(cos, 0)?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        return Ok(SaeMatch {
            heads,
            across: None,
        });
    };
    let (dense, block) = match across.dense {
        Side::A => (a, b),
        Side::B => (b, a),
    };
    let dense_unit = dense_unit_rows(dense);
    let m = across.features_per_head;
    // Each dense feature's closest so far (the first head's on equal cosines), and each
    // block-diagonal feature's closest dense one.
    let mut from_dense = vec![
        Closest {
            feature: 0,
            cosine: f32::NEG_INFINITY,
        };
        dense.config.features_per_head
    ];
    let mut from_block = Vec::with_capacity(across.n_heads * m);
    for h in 0..across.n_heads {
        let cos = across_head(dense_unit.clone(), head_unit_rows(block, h), h);
        for (best, c) in from_dense.iter_mut().zip(closest(cos.clone(), 1)?) {
            if c.cosine > best.cosine {
                *best = Closest {
                    feature: (h * m) as u32 + c.feature,
                    cosine: c.cosine,
                };
            }
        }
        from_block.extend(closest(cos, 0)?);
    }
    let (a_to_b, b_to_a) = match across.dense {
        Side::A => (from_dense, from_block),
        Side::B => (from_block, from_dense),
    };
    Ok(SaeMatch {
        heads: vec![HeadMatch {
            head: 0,
            a_to_b,
            b_to_a,
        }],
        across: Some(across),
    })
}

/// The `n` features of `b` closest to `a`'s feature `(head, feature)`, closest first: of the
/// same head for two block-diagonal SAEs; across a dense and a block-diagonal SAE, `head`
/// is 0 for a dense `a`, and a block-diagonal `b`'s features are numbered `h m + f` (see
/// [`Across::feature`]).
pub fn closest_to(
    a: &BlockDiagSae,
    b: &BlockDiagSae,
    (head, feature): (usize, usize),
    n: usize,
) -> anyhow::Result<Vec<Closest>> {
    let across = pairing(a, b)?;
    let (blocks, m) = (a.config.n_heads, a.config.features_per_head);
    anyhow::ensure!(
        head < blocks && feature < m,
        "head {head}, feature {feature}: {}",
        match blocks {
            1 => format!("the SAE has one block of {m} features (head 0)"),
            _ => format!("the SAE has {blocks} heads of {m} features"),
        }
    );
    let row = |t: Tensor<2>| {
        let [_, d] = t.dims();
        t.slice([feature..feature + 1, 0..d])
    };
    let cos: Vec<f32> = match across {
        None => {
            let cos = row(head_unit_rows(a, head)).matmul(head_unit_rows(b, head).transpose());
            crate::files::host_vec(cos)?
        }
        Some(x) if x.dense == Side::A => {
            let dense = row(dense_unit_rows(a));
            let mut all = Vec::with_capacity(x.n_heads * x.features_per_head);
            for h in 0..x.n_heads {
                all.extend(crate::files::host_vec(across_head(
                    dense.clone(),
                    head_unit_rows(b, h),
                    h,
                ))?);
            }
            all
        }
        Some(_) => {
            let cos = across_head(dense_unit_rows(b), row(head_unit_rows(a, head)), head);
            crate::files::host_vec(cos)?
        }
    };
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
