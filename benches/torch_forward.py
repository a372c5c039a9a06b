#!/usr/bin/env python3
"""PyTorch CPU baseline for the burn forward pass.

gpt2-small-sized GPT2LMHeadModel with random weights (n_layer 12, n_embd 768, n_head 12,
vocab 50257), fp32, CPU, torch.inference_mode(), batch 8 x 128 tokens.

  (a) to_layer_4: embeddings + blocks 0..4 (hidden states after block 4; no later blocks,
      no ln_f, no logits) -- what an SAE pipeline on layer-4 hook_z needs at most.
  (b) full: all 12 blocks + ln_f + logits.

Environment: tests/fixtures/requirements.txt (same venv as the fixture generator).
Run:  python benches/torch_forward.py [--batch 8] [--seq 128] [--warmup 2] [--iters 5]
Output lines are `torch_forward <key>=<value> ...` / `torch_forward <case> tokens_per_s=<x> ...`.
"""

import argparse
import os
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


def bench(fn, ids, warmup, iters, min_seconds):
    with torch.inference_mode():
        # `.sum().item()` reads a scalar back (as the Rust bench does), so GPU work is done.
        for _ in range(warmup):
            fn(ids).sum().item()
        n, t0 = 0, time.perf_counter()
        while n < iters or time.perf_counter() - t0 < min_seconds:
            fn(ids).sum().item()
            n += 1
        dt = time.perf_counter() - t0
    return n, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch default")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(cfg).eval().to(args.device)
    attn_impl = model.config._attn_implementation
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq)).to(args.device)
    tokens = args.batch * args.seq

    # (a) truncated model: same modules, only blocks 0..layer, ln_f removed.
    body = model.transformer
    all_blocks, ln_f = body.h, body.ln_f

    def to_layer(x):
        body.h = torch.nn.ModuleList(list(all_blocks)[: args.layer + 1])
        body.ln_f = torch.nn.Identity()
        try:
            return body(input_ids=x, use_cache=False).last_hidden_state
        finally:
            body.h, body.ln_f = all_blocks, ln_f

    def full(x):
        return model(input_ids=x, use_cache=False).logits

    # correctness of the truncation: equals HF's hidden_states[layer + 1] (pre-ln_f)
    with torch.inference_mode():
        small = ids[:1, :16]
        hs = model(input_ids=small, use_cache=False, output_hidden_states=True).hidden_states
        assert torch.allclose(to_layer(small), hs[args.layer + 1], atol=1e-5)

    print(f"torch_forward torch_version={torch.__version__} transformers_version={transformers.__version__}")
    print(
        f"torch_forward threads={torch.get_num_threads()} interop_threads={torch.get_num_interop_threads()} "
        f"cpu_count={os.cpu_count()} attn_implementation={attn_impl} dtype=float32 device={args.device}"
    )
    print(
        f"torch_forward batch={args.batch} seq={args.seq} tokens_per_batch={tokens} "
        f"warmup={args.warmup} min_iters={args.iters} min_seconds={args.min_seconds}"
    )
    for name, fn in ((f"to_layer_{args.layer}", to_layer), ("full_logits", full)):
        n, dt = bench(fn, ids, args.warmup, args.iters, args.min_seconds)
        print(
            f"torch_forward {name} tokens_per_s={tokens * n / dt:.1f} "
            f"ms_per_batch={1000 * dt / n:.1f} iters={n}"
        )


if __name__ == "__main__":
    main()
