#!/usr/bin/env python3
"""How close each feature of a block-diagonal SAE is to its nearest neighbour in its own
head (the cosine of their decoder rows, as the app's "closest in this head" shows), from
the SAE's weights alone:

    python scripts/closest_in_head.py RUN_DIR [HEAD,FEATURE]

Prints, per head and in all, how many features have a neighbour at cosine >= 0.9, 0.7 and
0.5, and the median of the nearest cosines; with HEAD,FEATURE, that feature's 6 nearest.
Needs numpy and safetensors.
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def main():
    run = Path(sys.argv[1])
    w = load_file(run / "sae" / "sae.safetensors")["W_dec"].astype(np.float64)  # [H, m, d]
    norms = np.linalg.norm(w, axis=2, keepdims=True)
    unit = np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)
    cos = unit @ unit.transpose(0, 2, 1)  # [H, m, m]
    heads, m, _ = cos.shape
    cos[:, np.arange(m), np.arange(m)] = -np.inf
    nearest = cos.max(axis=2)  # [H, m]
    print(f"{heads} heads x {m} features: features with a neighbour in their head at cosine")
    for h in range(heads):
        counts = [int((nearest[h] >= t).sum()) for t in (0.9, 0.7, 0.5)]
        print(f"  head {h}: >=0.9 {counts[0]}, >=0.7 {counts[1]}, >=0.5 {counts[2]}, "
              f"median nearest {np.median(nearest[h]):.3f}")
    counts = [int((nearest >= t).sum()) for t in (0.9, 0.7, 0.5)]
    print(f"  all: >=0.9 {counts[0]}, >=0.7 {counts[1]}, >=0.5 {counts[2]} of {heads * m}, "
          f"median nearest {np.median(nearest):.3f}")
    if len(sys.argv) > 2:
        h, f = (int(x) for x in sys.argv[2].split(","))
        order = np.argsort(-cos[h, f], kind="stable")[:6]
        print(f"head {h} feature {f}: " + ", ".join(f"#{g} {cos[h, f, g]:.2f}" for g in order))


if __name__ == "__main__":
    main()
