"""PyTorch's batched products at the SAE step's three shapes (the seed's SAE: 12 heads,
B = 4096, d_head = 64, m = 2048), for setting beside benches/coop_probe.rs (wgpu's
cooperative matrices, f16 operands summed in f32) and the step's own f32 launches
(`ATTN_SAES_PROFILE_LAUNCHES=1 cargo bench --bench sae_step`): f32 (TF32 off, PyTorch's
default for matmuls), TF32, and f16. Prints ms a product and TFLOP/s.

    python benches/torch_bmm.py [--device cuda|cpu] [--iters N]
"""

import argparse
import time

import torch

PRODUCTS = [
    # name, M, N, K, A stored [K, M] (transposed view)
    ("encoder X W_enc", 4096, 2048, 64, False),
    ("decoder F W_dec", 4096, 64, 2048, False),
    ("backward X^T dP", 64, 2048, 4096, True),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--heads", type=int, default=12)
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    kinds = [("f32", torch.float32, False)]
    if dev.type == "cuda":
        kinds += [("tf32", torch.float32, True), ("f16", torch.float16, False)]
    for name, m, n, k, a_t in PRODUCTS:
        for kind, dtype, tf32 in kinds:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            g = torch.Generator(device="cpu").manual_seed(0)
            a = torch.rand(args.heads, k, m, generator=g) if a_t else torch.rand(
                args.heads, m, k, generator=g
            )
            b = torch.rand(args.heads, k, n, generator=g)
            a, b = a.to(dev, dtype), b.to(dev, dtype)
            a = a.transpose(1, 2) if a_t else a
            c = torch.bmm(a, b)
            # The f32 sums of the same operands in float64, for the error of each kind.
            ref = torch.bmm(a.double(), b.double())
            err = ((c.double() - ref).abs().max() / ref.abs().max()).item()
            sync()
            t = time.perf_counter()
            for _ in range(args.iters):
                torch.bmm(a, b, out=c)
            sync()
            ms = (time.perf_counter() - t) * 1e3 / args.iters
            flop = 2.0 * args.heads * m * n * k
            print(
                f"torch_bmm device={dev.type} kind={kind} product={name!r} H={args.heads} "
                f"M={m} N={n} K={k} ms={ms:.3f} tflops={flop / ms / 1e9:.1f} max_rel_err={err:.2e}"
            )
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
