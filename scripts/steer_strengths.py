#!/usr/bin/env python3
"""How strongly to steer: for the N features that matter most on a run's held-out text
(`rank --run --json`), each prompt continued by `steer` at several multiples of the
feature's largest dashboard activation; prints, per multiple, the share of continuations
that part from the clean one, the mean new token where they part, and the mean probability
the model gave its steered tokens (against the clean ones': a fall means less fluent text).

    python3 scripts/steer_strengths.py RUN RANK_JSON [N] [BIN]
"""
import json
import subprocess
import sys
import time

run, rank_json = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 10
binary = sys.argv[4] if len(sys.argv) > 4 else "target/release/attn-saes"
PROMPTS = [
    "ROMEO: I will go to the market today, and",
    "Enter the King and Queen, with attendants.",
    "To be, or not to be: that is the",
]
TIMES = ["1x", "2x", "4x", "8x", "-4x"]
TOKENS = 24

ranked = json.load(open(rank_json))["features"][:n]
rows = {t: [] for t in TIMES}
clean_prob = []
seconds = []
for f in ranked:
    for prompt in PROMPTS:
        for t in TIMES:
            start = time.time()
            out = subprocess.run(
                [binary, "steer", run, prompt, "--feature", f"{f['head']},{f['feature']}",
                 "--strength", t, "--tokens", str(TOKENS), "--json"],
                capture_output=True, text=True, check=True)
            seconds.append(time.time() - start)
            s = json.loads(out.stdout)
            a, b = s["clean"]["ids"], s["steered"]["ids"]
            parts = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            mean = lambda p: sum(p) / len(p)
            rows[t].append((parts, mean(s["steered"]["prob"])))
            if t == TIMES[0]:
                clean_prob.append(mean(s["clean"]["prob"]))
print(f"{len(ranked)} features x {len(PROMPTS)} prompts, {TOKENS} new tokens; "
      f"clean mean probability {sum(clean_prob) / len(clean_prob):.3f}; "
      f"{sum(seconds) / len(seconds):.2f} s a call")
print("| strength | parted | mean new token where they part | mean probability, steered |")
print("|---|---|---|---|")
for t in TIMES:
    r = rows[t]
    parted = [p for p, _ in r if p is not None]
    where = f"{sum(parted) / len(parted):.1f}" if parted else "-"
    print(f"| {t} | {len(parted)}/{len(r)} | {where} | {sum(q for _, q in r) / len(r):.3f} |")
