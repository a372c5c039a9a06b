#!/usr/bin/env python3
"""How close `text --rank` (first-order estimates for every feature) comes to the exact
removal (`text --effect`) on a real run: the strongest N features each way plus N more drawn
at random (seed 0) from the rest, each removed exactly; prints the pairs, their Pearson
correlation, the share with the same sign and the largest errors. Flags after `--` go to
both (`-- --answer " Mary" --against " John"`: ranked by that logit difference, and the
exact change of it).

    python3 scripts/rank_vs_exact.py RUN "TEXT" [N] [BIN] [-- TEXT_FLAGS...]
"""
import json
import random
import subprocess
import sys

args, flags = sys.argv[1:], []
if "--" in args:
    args, flags = args[:args.index("--")], args[args.index("--") + 1:]
run, text = args[0], args[1]
n = int(args[2]) if len(args) > 2 else 15
binary = args[3] if len(args) > 3 else "target/release/attn-saes"


def ask(*extra):
    out = subprocess.run([binary, "text", run, text, "--json", *extra, *flags],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


ranked = ask("--rank", "1")["ranking"]["features"]
rest = ranked[n:-n]
random.Random(0).shuffle(rest)
chosen = ranked[:n] + ranked[-n:] + rest[:n]
pairs = []
for f in chosen:
    e = ask("--effect", f"{f['head']},{f['feature']}")["effect"]
    if "objective" in e:  # an answer: how much the feature adds to it
        exact = e["objective"][1]["clean"] - e["objective"][1]["changed"]
    else:
        exact = sum(a - l for a, l in zip(e["ablated"], e["loss"]))
    pairs.append((f["head"], f["feature"], f["estimate"], exact))
    print(f"head {f['head']} feature {f['feature']}: estimate {f['estimate']:+.4f}, exact {exact:+.4f}")
xs = [p[2] for p in pairs]
ys = [p[3] for p in pairs]
mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
r = cov / (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5
same = sum((x > 0) == (y > 0) for x, y in zip(xs, ys))
err = sorted(abs(x - y) for x, y in zip(xs, ys))
print(f"{len(ranked)} features fire; {len(pairs)} removed exactly: Pearson r {r:.3f}, same sign "
      f"{same}/{len(pairs)}, |estimate - exact| median {err[len(err) // 2]:.4f}, max {err[-1]:.4f}")
