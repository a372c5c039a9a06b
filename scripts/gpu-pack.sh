#!/usr/bin/env bash
# Prepares a GPU check for the `device` tool (a lent machine with no Rust toolchain): builds
# the release binaries here (the WGSL parity test, the SAE-step and forward benchmarks,
# the cooperative-matrix probe, attn-saes; about 41 MB compressed together, under the 64 MiB
# a call carries), strips and xz-compresses them into .gpu/bin.tar.xz, and downloads the
# Vulkan loader packages into .gl/. Both folders are git-excluded; pass
# `carry: [".gpu", ".gl"]` and run `bash scripts/gpu-check.sh 1` there (then `2`, time
# allowing; see that script).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu
# The test binaries' paths, from cargo's JSON messages.
built=$(cargo test --release --no-run --test wgsl_step --bench sae_step --bench forward --bench coop_probe \
    --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("wgsl_step", "sae_step", "forward", "coop_probe"):
        print(m["target"]["name"], m["executable"])')
cargo build --release --bin attn-saes
built+=$'\n'"attn-saes $target/release/attn-saes"
stripped=$(mktemp -d)
chmod 755 "$stripped"
while read -r name exe; do
    strip -o "$stripped/$name" "$exe"
done <<<"$built"
# One archive with a dictionary larger than the binaries together: they share most of their
# code (burn, cubecl, wgpu), so it is about half the size of each compressed alone (39 MB
# against 72; about 4 minutes here, 3 s to unpack).
tar cf - -C "$stripped" . | xz -T1 --lzma2=preset=6,dict=256MiB >.gpu/bin.tar.xz
rm -rf "$stripped"
# What the binaries were built from, so that a later session can tell whether the pack is
# current (gpu-check.sh prints it).
{ git rev-parse HEAD; git status --porcelain --untracked-files=no | sed 's/^/changed: /'; } >.gpu/commit
ls -la .gpu
if [ ! -d .gl ]; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update -qq
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .gpu .gl
