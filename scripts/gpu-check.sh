#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), from the repo root, with .gpu/ and .gl/
# carried (scripts/gpu-pack.sh makes them): the WGSL step's parity test on the GPU's
# Vulkan, then the SAE-step benchmark (WGSL, autodiff and PyTorch CUDA side by side) at the
# seed's shape and the small one, fresh (half the features fire) and trained-like (about
# 2%), TopK k=32, BatchTopK k=32 with either selection; then end-to-end training (harvest
# included) on a gpt2-small-shaped model with random weights (scripts/make_random_gpt2.py),
# the seed's SAE shape, with the WGSL step and with autodiff, and a dashboard build. Output
# goes to stdout and $OUT/log-STAGE. Each part has a time limit, so one that hangs does not take
# the whole call. All of it does not fit one call (600 s), so it runs in two stages, the
# issue's targets first:
#   bash scripts/gpu-check.sh 1   parity, the cooperative-matrix probe (benches/coop_probe.rs)
#                                 beside PyTorch's bmm, the SAE step at both shapes beside PyTorch CUDA,
#                                 fresh and trained-like; end to end with the WGSL step,
#                                 with autodiff, and with the LM's matrices in f16 (each
#                                 run's account of its time); the LM
#                                 forward at the harvest's batch, with burn's matmul and
#                                 with the step's (ATTN_SAES_LM_MATMUL=wgsl), and its
#                                 launches timed by kernel; the step's launches timed one
#                                 by one
#   bash scripts/gpu-check.sh 2   the rest: paths, tilings, TopK, AuxK, BatchTopK, harvest
#                                 variants, PyTorch's forward, dashboards
# and with no argument both, in that order. E2E_STEPS sets the end-to-end runs' length
# (default 300: long enough that start-up, pipeline compilation among it, is a small part).
set -uo pipefail
stage="${1:-all}"
out="${OUT:-/tmp}"
exec > >(tee "$out/log-$stage") 2>&1
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
mkdir -p /tmp/bin
xz -dc .gpu/bin.tar.xz | tar xf - -C /tmp/bin
chmod +x /tmp/bin/*
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
echo "binaries built from: $(cat .gpu/commit 2>/dev/null || echo unknown)"
export ATTN_SAES_REQUIRE_WGPU=1 XDG_RUNTIME_DIR=/tmp
# End-to-end training on the gpt2-small-shaped model: the WGSL step, autodiff and f16 LM
# matrices (stage 1); then the LM's products through the step's matmul, larger harvest
# batches and more launches per wgpu submission (cubecl's default is 32) (stage 2).
run() {
    local tag="$1"
    shift
    echo "-- $tag"
    timeout 150 /tmp/bin/attn-saes --device wgpu train --headless --no-dashboard \
        --model /tmp/g2 --dataset /tmp/g2/corpus.txt --hook-layer 6 --expansion-factor 32 \
        --batch-size 4096 --context-size 1024 --total-training-steps "${E2E_STEPS:-300}" \
        --eval-every 100000 --checkpoint-every 100000 --out-dir "/tmp/run-$tag" "$@" 2>&1 |
        grep -E "device|tokens/s|explained|L0 total|^time:" || echo "the $tag run failed"
    # The training rate over the last logging window (harvest included, start-up not).
    grep '"type":"step"' "/tmp/run-$tag/metrics.jsonl" 2>/dev/null | tail -1 |
        grep -o '"steps_per_s":[0-9.]*' || true
}
if [ "$stage" != 2 ]; then
echo "== parity: the WGSL step against the fused CPU step, the WGSL product against float64, the cooperative-matrix probe's products against the host, on the GPU"
timeout 120 /tmp/bin/wgsl_step --nocapture --skip coop_probe
# The cooperative-matrix kernels on their own, so that one that hangs costs its own minute.
timeout 60 /tmp/bin/wgsl_step --nocapture coop_probe
echo "== tensor cores through wgpu? cooperative matrices (f16 operands, f32 sums) at the step's product shapes, then PyTorch's bmm at the same"
timeout 60 /tmp/bin/coop_probe
timeout 60 python3 benches/torch_bmm.py --device cuda
echo "== SAE step: seed shape and small shape, fresh SAE"
timeout 150 /tmp/bin/sae_step --device wgpu --seconds 3 --torch
echo "== end to end: gpt2-small shape, random weights, layer 6, 32x, 4096-token batches"
python3 scripts/make_random_gpt2.py /tmp/g2
run wgsl --step auto
run autodiff --step autodiff
ATTN_SAES_LM_F16=1 run wgsl-f16-matmuls --step auto
echo "== LM forward on wgpu (gpt2-small, random weights) at the harvest's 8 x 1024 tokens"
timeout 90 /tmp/bin/forward --device wgpu --iters 5 --batch 8 --pos 1024
echo "== the same forward with the LM's products through the step's tiled matmul"
ATTN_SAES_LM_MATMUL=wgsl timeout 90 /tmp/bin/forward --device wgpu --iters 5 --batch 8 --pos 1024
echo "== the same forward's launches timed by kernel (where the harvest's time goes)"
ATTN_SAES_PROFILE_LAUNCHES=1 timeout 90 /tmp/bin/forward --device wgpu --iters 1 --batch 8 \
    --pos 1024 | cut -c1-160
echo "== SAE step: trained-like density (b_enc -0.2)"
timeout 150 /tmp/bin/sae_step --device wgpu --seconds 3 --b-enc -0.2 --torch
echo "== SAE step: the same held at its starting density (--lr 0: about 2% fire, the sparse path; training ends near 0.6%)"
timeout 60 /tmp/bin/sae_step --device wgpu --seconds 3 --b-enc -0.2 --lr 0 --no-autodiff \
    --shape 4096,12,64,2048
echo "== SAE step: seed shape, fresh, submitted every 4 launches (cubecl submits every 32 by default: a step's first kernel waits for most of the step to be encoded)"
CUBECL_WGPU_MAX_TASKS=4 timeout 60 /tmp/bin/sae_step --device wgpu --seconds 3 --no-autodiff \
    --shape 4096,12,64,2048
echo "== SAE step: launches timed one by one (in the order src/train/wgsl.rs lists), seed shape, fresh then trained-like"
ATTN_SAES_PROFILE_LAUNCHES=1 timeout 60 /tmp/bin/sae_step --device wgpu --shape 4096,12,64,2048 \
    --seconds 1 --no-autodiff
ATTN_SAES_PROFILE_LAUNCHES=1 timeout 60 /tmp/bin/sae_step --device wgpu --shape 4096,12,64,2048 \
    --seconds 1 --b-enc -0.2 --no-autodiff
fi
if [ "$stage" != 1 ]; then
[ -d /tmp/g2 ] || python3 scripts/make_random_gpt2.py /tmp/g2
[ -d /tmp/run-wgsl ] || run wgsl --step auto
echo "== SAE step: trained-like density on the dense path (sparse path off)"
ATTN_SAES_SPARSE_BELOW=0 timeout 150 /tmp/bin/sae_step --device wgpu --seconds 4 --b-enc -0.2 \
    --no-autodiff
echo "== SAE step: trained-like, the encoder's product through burn's matmul"
ATTN_SAES_WGSL_ENCODER=burn timeout 150 /tmp/bin/sae_step --device wgpu --seconds 4 --b-enc -0.2 \
    --no-autodiff
echo "== SAE step: the matmuls in the earlier 64 x 64 tiles, trained-like on the dense path"
ATTN_SAES_WGSL_TILES=small ATTN_SAES_SPARSE_BELOW=0 timeout 100 /tmp/bin/sae_step --device wgpu \
    --seconds 4 --b-enc -0.2 --no-autodiff
echo "== SAE step: TopK k=32"
timeout 150 /tmp/bin/sae_step --device wgpu --seconds 4 --topk 32
echo "== SAE step: TopK k=32 with AuxK, half of each head's features dead (WGSL step alone)"
timeout 60 /tmp/bin/sae_step --device wgpu --seconds 3 --topk 32 --aux-dead 0.5 --no-autodiff
echo "== SAE step: BatchTopK k=32, seed shape: selection over many workgroups a head, then one a head"
timeout 100 /tmp/bin/sae_step --device wgpu --seconds 3 --batchtopk 32 --shape 4096,12,64,2048
ATTN_SAES_BATCHTOPK_SELECT=one timeout 100 /tmp/bin/sae_step --device wgpu --seconds 3 \
    --batchtopk 32 --shape 4096,12,64,2048 --no-autodiff
echo "== SAE step: fresh, the matmuls in the earlier 64 x 64 tiles"
ATTN_SAES_WGSL_TILES=small timeout 100 /tmp/bin/sae_step --device wgpu --seconds 4 --no-autodiff
echo "== end to end, harvest variants"
ATTN_SAES_LM_MATMUL=wgsl run wgsl-lm-matmul --step auto
run wgsl-windows32 --step auto --windows-per-forward 32
CUBECL_WGPU_MAX_TASKS=128 run wgsl-tasks128 --step auto
echo "== LM forward on wgpu at 8 x 128 tokens, its launches timed by kernel"
ATTN_SAES_PROFILE_LAUNCHES=1 timeout 120 /tmp/bin/forward --device wgpu --iters 5 | cut -c1-160
echo "== PyTorch's LM forward, for the harvest's share"
timeout 60 python3 benches/torch_forward.py --device cuda
echo "== dashboards of the WGSL run (seed shape, 65,536 tokens; the encoder runs on the host)"
started=$SECONDS
timeout 120 /tmp/bin/attn-saes --device wgpu dashboard --run /tmp/run-wgsl --tokens 65536 2>&1 |
    tail -3 || echo "the dashboard build failed"
echo "dashboard wall $((SECONDS - started)) s (model load included)"
fi
