#!/usr/bin/env python3
"""PyTorch CPU baseline for block-diagonal SAE *training steps* (attn-saes).

One step = forward + loss + backward + Adam step, fp32, ReLU SAE with the
decoder-norm-weighted L1 penalty (REFERENCE.md section 2):

    loss = mean_b( sum_h ||x_hat^h - x^h||^2 + lambda * sum_h sum_i f_i^h ||W_dec[h][i,:]|| )

Two implementations:
  bmm        stacked parameters W_enc [H,d,m], W_dec [H,m,d]; batched matmul over heads
  block_diag the seed fork's dense method: per-head blocks (enc_blocks.{h}.weight [m,d],
             dec_blocks.{h}.weight [d,m]) assembled every step with torch.block_diag into
             dense [H*d, H*m] / [H*m, H*d] matrices and multiplied densely (~H x the FLOPs)

Configs: gpt2 seed config B=4096 H=12 d=64 m=2048, and a smaller B=1024 H=12 d=64 m=512.

    python benches/torch_sae_step.py [--quick] [--threads N] [--seconds S] [--b-enc V] [--lr LR]

--lr 0 holds the SAE (and its density) fixed while every step still runs.
--b-enc V starts every encoder bias at V (0: about half the features fire, as in a fresh
SAE; -0.2: about 2% fire, as in a trained one), as `cargo bench --bench sae_step` does.

--quick runs only the small config. Output lines look like
    torch_sae_step impl=bmm B=4096 H=12 d=64 m=2048 steps_per_s=1.234
"""

import argparse
import platform
import time

import torch

LAMBDA = 2.0
LR = 5e-5


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def april_init(H, m, d, g):
    """Decoder rows of norm 0.1 in random directions (attn-saes' init), [H, m, d]."""
    W_dec = torch.randn(H, m, d, generator=g)
    return W_dec / W_dec.norm(dim=2, keepdim=True) * 0.1


class BmmSAE:
    def __init__(self, H, d, m, g, dev="cpu", b_enc=0.0):
        W_dec = april_init(H, m, d, g)
        self.W_enc = W_dec.transpose(1, 2).contiguous().to(dev).requires_grad_(True)
        self.b_enc = torch.full((H, m), b_enc, device=dev, requires_grad=True)
        self.W_dec = W_dec.to(dev).requires_grad_(True)
        self.b_dec = torch.zeros(H, d, device=dev, requires_grad=True)
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def loss(self, x):  # x [B, H, d]
        xh = x.transpose(0, 1)  # [H, B, d]
        f = torch.relu(torch.bmm(xh, self.W_enc) + self.b_enc[:, None, :])  # [H,B,m]
        x_hat = torch.bmm(f, self.W_dec) + self.b_dec[:, None, :]  # [H,B,d]
        mse = (x_hat - xh).pow(2).sum(dim=(0, 2)).mean()
        dec_norm = self.W_dec.norm(dim=2)  # [H, m]
        l1 = (f * dec_norm[:, None, :]).sum(dim=(0, 2)).mean()
        return mse + LAMBDA * l1


class BlockDiagSAE:
    """Seed fork layout: nn.Linear-style blocks, dense block_diag assembled per step."""

    def __init__(self, H, d, m, g, dev="cpu", b_enc=0.0):
        W_dec = april_init(H, m, d, g)
        self.enc_w = [W_dec[h].clone().to(dev).requires_grad_(True) for h in range(H)]
        self.enc_b = [torch.full((m,), b_enc, device=dev, requires_grad=True) for _ in range(H)]
        self.dec_w = [W_dec[h].t().contiguous().to(dev).requires_grad_(True) for h in range(H)]
        self.dec_b = [torch.zeros(d, device=dev, requires_grad=True) for _ in range(H)]
        self.params = self.enc_w + self.enc_b + self.dec_w + self.dec_b

    def loss(self, x):  # x [B, H, d]
        B = x.shape[0]
        xc = x.reshape(B, -1)  # [B, H*d], head-major
        W_enc = torch.block_diag(*[w.t() for w in self.enc_w])  # [H*d, H*m]
        b_enc = torch.cat(self.enc_b)
        W_dec = torch.block_diag(*[w.t() for w in self.dec_w])  # [H*m, H*d]
        b_dec = torch.cat(self.dec_b)
        f = torch.relu(xc @ W_enc + b_enc)  # [B, H*m]
        x_hat = f @ W_dec + b_dec
        mse = (x_hat - xc).pow(2).sum(dim=1).mean()
        l1 = (f * W_dec.norm(dim=1)).sum(dim=1).mean()
        return mse + LAMBDA * l1


def bench(impl, B, H, d, m, seconds, warmup=2, min_steps=3, dev="cpu", b_enc=0.0, lr=LR, every=1):
    """Steps/s, steps, seconds; the loss read back every `every` steps (1: each step)."""
    g = torch.Generator().manual_seed(0)
    sae = {"bmm": BmmSAE, "block_diag": BlockDiagSAE}[impl](H, d, m, g, dev, b_enc)
    opt = torch.optim.Adam(sae.params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    x = torch.randn(B, H, d, generator=g).to(dev)

    def step(read=True):
        opt.zero_grad(set_to_none=True)
        loss = sae.loss(x)
        loss.backward()
        opt.step()
        # Read the loss back, as the Rust bench does, so each step has finished (GPU sync).
        if read:
            loss.item()

    for _ in range(warmup):
        step()
    n = 0
    t0 = time.perf_counter()
    while True:
        n += 1
        step(read=n % every == 0)
        dt = time.perf_counter() - t0
        if n >= min_steps and n % every == 0 and dt >= seconds:
            break
    return n / dt, n, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the small config")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    ap.add_argument("--seconds", type=float, default=5.0, help="target time per measurement")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--b-enc", type=float, default=0.0, help="initial encoder bias")
    ap.add_argument("--lr", type=float, default=LR, help="Adam learning rate (0 holds the SAE fixed)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}")
    print(f"threads {torch.get_num_threads()}")
    print(f"cpu {cpu_model()}")
    configs = [(1024, 12, 64, 512)]
    if not args.quick:
        configs.append((4096, 12, 64, 2048))
    for B, H, d, m in configs:
        for impl in ("bmm", "block_diag"):
            kw = dict(dev=args.device, b_enc=args.b_enc, lr=args.lr)
            sps, n, dt = bench(impl, B, H, d, m, args.seconds, **kw)
            # bmm also with the loss read every tenth step only, as the Rust bench's
            # steps_per_s_read_every_10 (training reads its metrics so).
            every10 = ""
            if impl == "bmm":
                sps10, _, _ = bench(impl, B, H, d, m, args.seconds, every=10, **kw)
                every10 = f" steps_per_s_read_every_10={sps10:.3f}"
            print(
                f"torch_sae_step device={args.device} impl={impl} B={B} H={H} d={d} m={m} b_enc={args.b_enc} lr={args.lr}"
                f" steps_per_s={sps:.3f}{every10}"
                f"  ({n} steps in {dt:.1f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
