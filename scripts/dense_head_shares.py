#!/usr/bin/env python3
"""Which heads a dense SAE's features write, from the SAE's weights alone (what the
dashboards show as "writes to h3 96%"): each feature's decoder row's share of squared norm
in each head's part of hook_z, over the features the run saw fire (its SAELens export's
sparsity above -10, the log10 floor):

    python scripts/dense_head_shares.py RUN_DIR N_HEADS

Prints how many live features have 90% and 50% of their norm in one head, the median of
their largest share, and how many features each head dominates. Plain Python (no numpy).
"""

import array
import json
import statistics
import struct
import sys
from pathlib import Path


def load(path):
    """The f32 tensors of a safetensors file: name -> (values, shape)."""
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: {t['dtype']}"
        start, end = t["data_offsets"]
        values = array.array("f")
        values.frombytes(b[8 + n + start : 8 + n + end])
        out[name] = (values, t["shape"])
    return out


def main():
    run, heads = Path(sys.argv[1]), int(sys.argv[2])
    w_dec, shape = load(run / "sae" / "sae.safetensors")["W_dec"]
    assert shape[0] == 1, f"W_dec {shape}: not a dense SAE"
    m, d = shape[1], shape[2]
    part = d // heads
    sparsity = load(run / "saelens" / "sparsity.safetensors")["sparsity"][0]
    largest, dominant = [], [0] * heads
    for f in range(m):
        if sparsity[f] <= -10:
            continue
        row = w_dec[f * d : (f + 1) * d]
        parts = [sum(x * x for x in row[h * part : (h + 1) * part]) for h in range(heads)]
        top = max(parts)
        largest.append(top / sum(parts))
        dominant[parts.index(top)] += 1
    n = len(largest)
    print(f"{n} live features of {m}:")
    print(f"  with >= 90% of their decoder norm in one head: {sum(x >= 0.9 for x in largest)}")
    print(f"  with >= 50% in one head: {sum(x >= 0.5 for x in largest)}")
    print(f"  median largest share: {statistics.median(largest):.3f}")
    print("  features by the head they write most:", ", ".join(
        f"h{h} {c}" for h, c in enumerate(dominant)))


if __name__ == "__main__":
    main()
