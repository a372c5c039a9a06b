#!/usr/bin/env python3
"""Rewrite a GGUF model's matrices as a `Q4_K_M` file lays them out: Q4_K, with Q6_K for the
embedding, and for the value and MLP down projections of the layers llama.cpp gives more
bits (the first and last eighth, and every third between), and, as llama.cpp falls
back where a row is not whole 256-weight super-blocks (SmolLM2's 576-wide rows), Q5_0 for
Q4_K and Q8_0 for Q6_K; 1-D tensors stay as they are.

This is a check of attn-saes' K-quant reader on a real model, not a quantiser to use: the
scales are simple min/max ones (llama.cpp's search for the best scales is not reproduced),
so the file loses more than llama.cpp's own Q4_K_M would. Every rewritten tensor is
dequantised again with gguf-py (the reference the reader is tested against) and its error
printed; the metadata (tokenizer included) is copied unchanged.

    python scripts/requantize_gguf.py IN.gguf OUT.gguf [F32.gguf]   # numpy and gguf (PyPI)
    attn-saes forward --model OUT.gguf --text "..."       # then compare with IN.gguf

With F32.gguf, also writes the same model with every rewritten tensor as the F32 values
gguf-py dequantises OUT.gguf's to: the forward on OUT.gguf should match it to float
rounding (attn-saes dequantises as it loads).
"""

from __future__ import annotations

import sys

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

QK_K = 256


def f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The f16 bytes of x (last axis 2) and the values they hold, as float32."""
    h = x.astype(np.float16)
    return h.view(np.uint8).reshape(*x.shape, 2), h.astype(np.float32)


def q4_k(x: np.ndarray) -> np.ndarray:
    """Blocks of [n, 256] float32 weights -> [n, 144] bytes (d, dmin, 12 bytes of 6-bit
    scales and minimums, 128 bytes of nibbles)."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    scale, mins = (hi - lo) / 15.0, -lo
    d_bytes, d = f16(scale.max(axis=1) / 63.0)
    m_bytes, dmin = f16(mins.max(axis=1) / 63.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(0, 63).astype(np.uint8)
        mq = np.where(dmin[:, None] > 0, np.rint(mins / dmin[:, None]), 0).clip(0, 63).astype(np.uint8)
        dl = (d[:, None] * sc)[:, :, None]
        ml = (dmin[:, None] * mq)[:, :, None]
        q = np.where(dl > 0, np.rint((sub + ml) / dl), 0).clip(0, 15).astype(np.uint8)
    packed = np.zeros((n, 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = mq[:, 0:4] | ((mq[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 15) | ((mq[:, 4:8] & 15) << 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(n, 128)
    return np.concatenate([d_bytes, m_bytes, packed, qs], axis=1)


def q6_k(x: np.ndarray) -> np.ndarray:
    """Blocks of [n, 256] float32 weights -> [n, 210] bytes (128 bytes of low nibbles, 64
    of 2-bit high parts, 16 signed scales, d)."""
    n = x.shape[0]
    groups = x.reshape(n, 16, 16)
    scale = np.abs(groups).max(axis=2) / 31.0
    d_bytes, d = f16(scale.max(axis=1) / 127.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(-128, 127).astype(np.int8)
        dl = (d[:, None] * sc)[:, :, None]
        q = np.where(dl != 0, np.rint(groups / dl), 0).clip(-32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(n, 2, 128)  # [block, half, r]
    ql = np.zeros((n, 2, 64), dtype=np.uint8)
    qh = np.zeros((n, 2, 32), dtype=np.uint8)
    for r in range(128):
        ql[:, :, r % 64] |= (q[:, :, r] & 15) << (4 * (r // 64))
        qh[:, :, r % 32] |= (q[:, :, r] >> 4) << (2 * (r // 32))
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d_bytes], axis=1)


def more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's `use_more_bits`."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def target_type(name: str, shape: tuple[int, ...], layers: int) -> QT | None:
    if len(shape) != 2:
        return None
    six = any(s in name for s in ("token_embd", "output.weight"))
    if any(s in name for s in ("attn_v", "ffn_down")):
        six = more_bits(int(name.split(".")[1]), layers)
    if shape[1] % QK_K != 0:
        return QT.Q8_0 if six else QT.Q5_0
    return QT.Q6_K if six else QT.Q4_K


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    layers = int(reader.fields[f"{arch}.block_count"].contents())
    writers = [gguf.GGUFWriter(path, arch=arch) for path in sys.argv[2:4]]
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        for w in writers:
            w.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer = writers[0]
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        qtype = target_type(t.name, shape, layers)
        if qtype is None:
            for w in writers:
                w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
            print(f"{t.name:32} {t.tensor_type.name:>5} kept")
            continue
        if qtype in (QT.Q4_K, QT.Q6_K):
            blocks = values.astype(np.float32).reshape(-1, QK_K)
            data = (q4_k if qtype == QT.Q4_K else q6_k)(blocks).reshape(shape[0], -1)
        else:
            data = gguf.quants.quantize(values.astype(np.float32), qtype)
        back = gguf.quants.dequantize(data, qtype).reshape(shape)
        rel = np.linalg.norm(back - values) / max(np.linalg.norm(values), 1e-30)
        writer.add_tensor(t.name, data, raw_dtype=qtype)
        if len(writers) > 1:
            writers[1].add_tensor(t.name, back.astype(np.float32))
        print(f"{t.name:32} {t.tensor_type.name:>5} -> {qtype.name}: relative error {rel:.4f}")
    for w in writers:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


if __name__ == "__main__":
    main()
