#!/usr/bin/env python3
"""What wrote what the features read, over a dashboard file built with --upstream.

    python scripts/upstream_writers.py up.safetensors [HEAD,FEATURE]

Reads the file's upstream split (`attn-saes dashboard --upstream`; the arrays are
described in src/dashboard/format.rs and README "Formats") with numpy alone and prints:
how many features have top examples taken apart, which writer is the largest (by size)
for how many of them, and, over the features whose mean DFA from the source is above 0.5,
how many of the heads listed among their writers write more than a tenth, a fifth and a
quarter of it, with the largest such shares. With HEAD,FEATURE, that feature's split as
the viewers show it.

Needs numpy and safetensors (pip install numpy safetensors).
"""

import collections
import json
import sys

from safetensors import safe_open
from safetensors.numpy import load_file

UNUSED = 2**32 - 1


def name(w):
    kind = w["kind"]
    if kind == "head":
        return f"L{w['layer']} h{w['head']}"
    if kind == "mlp":
        return f"MLP {w['layer']}"
    return kind.replace("_", " ")


def main():
    path = sys.argv[1]
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    envelope = json.loads(next(iter(metadata.values())))
    meta = json.loads(envelope["meta"])["meta"]
    if "upstream" not in meta:
        sys.exit(f"{path} has no upstream split: build it with `attn-saes dashboard --upstream`")
    writers = meta["upstream"]["writers"]
    arrays = load_file(path)
    heads = meta["sae"]["n_heads"]

    def head_arrays(h):
        p = f"h{h}.upstream_"
        return (arrays[p + "examples"], arrays[p + "dfa"], arrays[p + "rest"],
                arrays[p + "writer"], arrays[p + "spread"], arrays[p + "reading"])

    if len(sys.argv) > 2:
        h, f = (int(x) for x in sys.argv[2].split(","))
        n, dfa, rest, ids, spread, reading = head_arrays(h)
        if n[f] == 0:
            sys.exit(f"head {h} feature {f} has no top example taken apart")
        print(f"head {h} feature {f} over its {n[f]} top examples: the DFA from the source, "
              f"mean {dfa[f]:+.4f}")
        listed = 0
        for j, i in enumerate(ids[f]):
            if i == UNUSED:
                continue
            listed += 1
            w = writers[i]
            mean, sd, lo, hi = spread[f, j]
            line = f"  {mean:+.4f}  {name(w):<28} ({sd:.4f}) [{lo:+.4f}, {hi:+.4f}]"
            if w["kind"] == "head":
                itself, bos, elsewhere = reading[f, j]
                line += f"  itself {itself:+.4f}, BOS {bos:+.4f}, elsewhere {elsewhere:+.4f}"
            print(line)
        print(f"  {rest[f]:+.4f}  the other {len(writers) - listed} together")
        return

    largest = collections.Counter()
    shares = []
    features = 0
    for h in range(heads):
        n, dfa, _, ids, spread, _ = head_arrays(h)
        for f in range(len(n)):
            if n[f] == 0:
                continue
            features += 1
            largest[name(writers[ids[f, 0]])] += 1
            if dfa[f] <= 0.5:
                continue
            for j, i in enumerate(ids[f]):
                if i != UNUSED and writers[i]["kind"] == "head":
                    shares.append((spread[f, j, 0] / dfa[f], h, f, name(writers[i])))
    heads_largest = sum(c for w, c in largest.items() if w.startswith("L"))
    print(f"{features} features with top examples taken apart; the largest writer:")
    for w, c in largest.most_common(8):
        print(f"  {c:>6}  {w}")
    print(f"  (a head for {heads_largest})")
    print(f"{len(shares)} head parts listed for the features whose mean DFA from the source is "
          f"above 0.5; above a tenth of it: {sum(s > 0.1 for s, *_ in shares)}, a fifth: "
          f"{sum(s > 0.2 for s, *_ in shares)}, a quarter: {sum(s > 0.25 for s, *_ in shares)}")
    for s, h, f, w in sorted(shares, reverse=True)[:5]:
        print(f"  {s:.3f}  head {h} feature {f}: {w}")


if __name__ == "__main__":
    main()
