#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), from the repo root, with .gpu/ and .gl/
# carried (scripts/gpu-pack.sh makes them): the WGSL step's parity test on the GPU's
# Vulkan, then the SAE-step benchmark (WGSL, autodiff and PyTorch CUDA side by side) at the
# seed's shape and the small one, fresh (half the features fire) and trained-like (about
# 2%), TopK k=32, and the LM forward against PyTorch. Output goes to stdout and $OUT/log.
set -uo pipefail
out="${OUT:-/tmp}"
exec > >(tee "$out/log") 2>&1
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
mkdir -p /tmp/bin
for f in .gpu/*.xz; do xz -dc "$f" >"/tmp/bin/$(basename "$f" .xz)"; done
chmod +x /tmp/bin/*
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
export ATTN_SAES_REQUIRE_WGPU=1 XDG_RUNTIME_DIR=/tmp
echo "== parity: the WGSL step against the fused CPU step, on the GPU"
/tmp/bin/wgsl_step --nocapture
echo "== SAE step: seed shape and small shape, fresh SAE"
/tmp/bin/sae_step --device wgpu --seconds 4 --torch
echo "== SAE step: trained-like density (b_enc -0.2)"
/tmp/bin/sae_step --device wgpu --seconds 4 --b-enc -0.2 --torch
echo "== SAE step: trained-like density on the dense path (sparse path off)"
ATTN_SAES_SPARSE_BELOW=0 /tmp/bin/sae_step --device wgpu --seconds 4 --b-enc -0.2
echo "== SAE step: TopK k=32"
/tmp/bin/sae_step --device wgpu --seconds 4 --topk 32
echo "== SAE step: launches timed one by one, seed shape, trained-like"
ATTN_SAES_PROFILE_LAUNCHES=1 /tmp/bin/sae_step --device wgpu --shape 4096,12,64,2048 \
    --seconds 1 --b-enc -0.2
echo "== LM forward, gpt2-small shape"
/tmp/bin/forward --device wgpu
python3 benches/torch_forward.py --device cuda
