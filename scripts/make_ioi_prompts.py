#!/usr/bin/env python3
"""Writes examples/ioi_prompts.jsonl: indirect-object identification prompts (after Wang et
al.'s templates) for `attn-saes rank --run RUN --prompts examples/ioi_prompts.jsonl`, each
`{"text", "answer", "against"}` with the indirect object as the answer and the repeated
subject against it. Names are one token each in GPT-2's and SmolLM2's vocabularies (with
their leading space). Deterministic: rerunning writes the same file.

    python3 scripts/make_ioi_prompts.py [N]
"""
import json
import random
import sys
from pathlib import Path

NAMES = ["Mary", "John", "Tom", "James", "Sarah", "David", "Anna", "Paul", "Lisa", "Mark"]
PLACES = ["store", "park", "school", "station", "garden", "office"]
OBJECTS = ["drink", "book", "ball", "letter", "key", "gift"]
TEMPLATES = [
    "When {A} and {B} went to the {P}, {B} gave a {O} to",
    "When {B} and {A} went to the {P}, {B} gave a {O} to",
    "After {A} and {B} went to the {P}, {B} gave a {O} to",
    "Then, {B} and {A} had a long day at the {P}. {B} gave a {O} to",
]

n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
rng = random.Random(0)
out = Path(__file__).resolve().parents[1] / "examples" / "ioi_prompts.jsonl"
with out.open("w") as f:
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        text = TEMPLATES[i % len(TEMPLATES)].format(A=a, B=b, P=rng.choice(PLACES), O=rng.choice(OBJECTS))
        f.write(json.dumps({"text": text, "answer": " " + a, "against": " " + b}) + "\n")
print(f"wrote {n} prompts to {out}")
