#!/usr/bin/env python3
"""Ways of steering side by side: for each prompt, the N features that matter most in it
(`text --rank N`, by the estimated rise in the prompt's loss without them, either way),
the prompt continued by `steer` with each feature removed (`--clamp --strength 0`), held
at 4x its largest dashboard activation (`--clamp --strength 4x`), added at 4x, and added
at 4x at the new tokens only (`--new-only`); prints, per way, the share of continuations that part from the clean one, the mean new
token where they part and the mean probability the model gave its steered tokens.

    python3 scripts/steer_ways.py RUN [N] [BIN]
"""
import json
import subprocess
import sys

run = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
binary = sys.argv[3] if len(sys.argv) > 3 else "target/release/attn-saes"
PROMPTS = [
    "ROMEO: I will go to the market today, and",
    "Enter the King and Queen, with attendants.",
    "To be, or not to be: that is the",
]
WAYS = {
    "removed (--clamp --strength 0)": ["--clamp", "--strength", "0"],
    "held at 4x (--clamp --strength 4x)": ["--clamp", "--strength", "4x"],
    "added at 4x (--strength 4x)": ["--strength", "4x"],
    "added at 4x, new tokens only (--new-only)": ["--strength", "4x", "--new-only"],
}
TOKENS = 24


def cli(*args):
    out = subprocess.run([binary, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


rows = {w: [] for w in WAYS}
clean_prob = []
examples = []
for prompt in PROMPTS:
    ranked = cli("text", run, prompt, "--rank", str(n), "--json")["ranking"]["features"]
    ranked = sorted(ranked, key=lambda f: -abs(f["estimate"]))[:n]
    for f in ranked:
        for way, flags in WAYS.items():
            s = cli("steer", run, prompt, "--feature", f"{f['head']},{f['feature']}",
                    "--tokens", str(TOKENS), "--json", *flags)
            a, b = s["clean"]["ids"], s["steered"]["ids"]
            parts = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if parts is None and len(a) != len(b):
                parts = min(len(a), len(b))
            mean = lambda p: sum(p) / len(p)
            rows[way].append((parts, mean(s["steered"]["prob"])))
            if way.startswith("removed"):
                clean_prob.append(mean(s["clean"]["prob"]))
                if parts is not None:
                    examples.append((prompt, f, s["clean"]["text"], s["steered"]["text"]))
print(f"{len(PROMPTS)} prompts x their {n} features that matter most, {TOKENS} new tokens; "
      f"clean mean probability {sum(clean_prob) / len(clean_prob):.3f}")
print("| way | parted | mean new token where they part | mean probability, steered |")
print("|---|---|---|---|")
for way, r in rows.items():
    parted = [p for p, _ in r if p is not None]
    where = f"{sum(parted) / len(parted):.1f}" if parted else "-"
    print(f"| {way} | {len(parted)}/{len(r)} | {where} | {sum(q for _, q in r) / len(r):.3f} |")
for prompt, f, clean, removed in examples:
    print(f"removed head {f['head']} #{f['feature']} (estimate {f['estimate']:+.4f}) in {prompt!r}:")
    print(f"  clean   {clean!r}\n  removed {removed!r}")
