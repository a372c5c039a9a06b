#!/usr/bin/env python3
"""A gpt2-small-shaped model with random weights, for end-to-end training throughput where
no real weights can be fetched (a lent GPU machine, see scripts/gpu-check.sh).

Writes DIR/config.json and DIR/model.safetensors in Hugging Face's GPT-2 layout (12 layers,
12 heads, d_model 768, 1024 positions, weights N(0, 0.02) as GPT-2's initialiser) and copies
the tiny fixture's 400-token tokenizer.json (the vocabulary size follows it; the forward
to a hooked layer costs the same). Also writes DIR/corpus.txt, text to tokenize: the
repository's Markdown and Rust sources, repeated to about --corpus-mb MB. numpy only.

    python3 scripts/make_random_gpt2.py DIR [--layers 12] [--corpus-mb 8]
"""

import argparse
import json
import pathlib
import shutil
import struct

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--corpus-mb", type=float, default=8.0)
    args = ap.parse_args()
    out = pathlib.Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    fixture = ROOT / "tests/fixtures/gpt2_tiny"
    config = json.loads((fixture / "config.json").read_text())
    d, n_pos, vocab = args.d_model, args.positions, config["vocab_size"]
    config.update(n_embd=d, n_head=args.heads, n_layer=args.layers, n_positions=n_pos)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(fixture / "tokenizer.json", out / "tokenizer.json")

    rng = np.random.default_rng(0)
    tensors = {}

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    tensors["wte.weight"] = normal(vocab, d)
    tensors["wpe.weight"] = normal(n_pos, d)
    for i in range(args.layers):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            tensors[p + ln + ".weight"] = np.ones(d, np.float32)
            tensors[p + ln + ".bias"] = np.zeros(d, np.float32)
        tensors[p + "attn.c_attn.weight"] = normal(d, 3 * d)
        tensors[p + "attn.c_attn.bias"] = np.zeros(3 * d, np.float32)
        tensors[p + "attn.c_proj.weight"] = normal(d, d)
        tensors[p + "attn.c_proj.bias"] = np.zeros(d, np.float32)
        tensors[p + "mlp.c_fc.weight"] = normal(d, 4 * d)
        tensors[p + "mlp.c_fc.bias"] = np.zeros(4 * d, np.float32)
        tensors[p + "mlp.c_proj.weight"] = normal(4 * d, d)
        tensors[p + "mlp.c_proj.bias"] = np.zeros(d, np.float32)
    tensors["ln_f.weight"] = np.ones(d, np.float32)
    tensors["ln_f.bias"] = np.zeros(d, np.float32)

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for t in tensors.values():
            f.write(t.tobytes())

    sources = [p for p in sorted(ROOT.rglob("*")) if p.suffix in (".md", ".rs")
               and "target" not in p.parts and "node_modules" not in p.parts]
    text = "\n".join(p.read_text(errors="replace") for p in sources)
    want = int(args.corpus_mb * 1e6)
    with open(out / "corpus.txt", "w") as f:
        written = 0
        while written < want:
            f.write(text)
            written += len(text)
    print(f"{out}: {args.layers} layers, d_model {d}, {len(tensors)} tensors, "
          f"{offset / 1e6:.0f} MB of weights, corpus {written / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
