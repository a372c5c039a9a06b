#!/usr/bin/env python3
"""Where each head's features read from, recomputed in numpy from a dashboard file.

    python scripts/reads_from.py runs/latest/dashboard.safetensors

An independent check of src/dashboard/sources.rs (and an example of reading the
dashboard file from Python: it is a safetensors file; see src/dashboard/format.rs). For
every top example, the source position with the largest positive DFA is classed by the
same rules (first token, itself, previous token, induction, duplicate token, elsewhere);
a feature's kind is the one more than half its top examples share, else mixed. Prints
each head's counts in the order of `attn-saes features --json`'s `reads_from.counts`
(previous, induction, duplicate, itself, first, elsewhere) and mixed, and, for the
induction kind, how often a source chosen at random would meet its rule: the share of the
positions before the previous token whose predecessor holds the target's token.

Needs numpy and safetensors (pip install numpy safetensors).
"""

import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

KINDS = ["previous", "induction", "duplicate", "itself", "first", "elsewhere"]
TOP_GROUP = 255


def classify(w, d, s):
    if s == 0:
        return "first"
    if s == d:
        return "itself"
    if s + 1 == d:
        return "previous"
    if s < d and w[s - 1] == w[d]:
        return "induction"
    if s < d and w[s] == w[d]:
        return "duplicate"
    return "elsewhere"


def main(path):
    arrays = load_file(path)
    with safe_open(path, "np") as f:
        outer = json.loads(f.metadata()["attn_saes_dashboard"])
    meta = json.loads(outer["meta"])["meta"]
    windows = arrays["windows"]
    n_heads, m = meta["sae"]["n_heads"], meta["sae"]["features_per_head"]
    print("head  " + " ".join(f"{k:>9}" for k in KINDS + ["mixed"]) + "  induction by chance")
    for h in range(n_heads):
        group = arrays[f"h{h}.example_group"]
        window = arrays[f"h{h}.example_window"]
        target = arrays[f"h{h}.example_target"]
        ex_off = arrays[f"h{h}.example_offsets"]
        dfa_off = arrays[f"h{h}.dfa_offsets"]
        dfa_all = arrays[f"h{h}.dfa_values"].astype(np.float32)
        counts = dict.fromkeys(KINDS + ["mixed"], 0)
        chance, eligible = 0.0, 0
        for f in range(m):
            per = dict.fromkeys(KINDS, 0)
            for i in range(ex_off[f], ex_off[f + 1]):
                if group[i] != TOP_GROUP:
                    continue
                dfa = dfa_all[dfa_off[i] : dfa_off[i + 1]]
                if not (dfa > 0).any():
                    continue
                s = int(np.argmax(np.where(dfa > 0, dfa, -np.inf)))  # the first of equals
                w, d = windows[window[i]], int(target[i])
                per[classify(w, d, s)] += 1
                if d >= 3:
                    chance += sum(w[q - 1] == w[d] for q in range(1, d - 1)) / (d - 2)
                    eligible += 1
            n = sum(per.values())
            if n:
                main_kind = [k for k in KINDS if 2 * per[k] > n]
                counts[main_kind[0] if main_kind else "mixed"] += 1
        row = " ".join(f"{counts[k]:>9}" for k in KINDS + ["mixed"])
        print(f"{h:>4}  {row}  {chance / max(eligible, 1):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
