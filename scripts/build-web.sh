#!/usr/bin/env bash
# Builds the web viewer into web/dist/ (static files any server can host):
#   scripts/build-web.sh
# Needs what a fresh machine gets from crates.io and Debian: the wasm32 target
# (`rustup target add wasm32-unknown-unknown`, done here when missing), wasm-bindgen-cli at
# the lock file's wasm-bindgen version (installed here into $TOOLS when missing), and
# wasm-opt (binaryen) with WASM_OPT=1: off by default, because Debian 12's binaryen 108
# turns rustc 1.95's output into a module Chromium rejects (checked: "Table.set():
# Argument 1 is invalid"); the unoptimised viewer is 4.5 MB, 1.7 MB gzipped.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
tools=${TOOLS:-$target_dir/tools}
version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
[ -n "$version" ] || { echo "no wasm-bindgen in Cargo.lock" >&2; exit 1; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
bindgen=$tools/bin/wasm-bindgen
if ! { [ -x "$bindgen" ] && "$bindgen" --version | grep -q " $version"; }; then
    echo "installing wasm-bindgen-cli $version into $tools"
    cargo install wasm-bindgen-cli --version "$version" --root "$tools"
fi

# Only the viewer's modules build for wasm32 (src/lib.rs); a cdylib just for this target.
cargo rustc --lib --target wasm32-unknown-unknown --profile wasm-release --crate-type cdylib
wasm=$target_dir/wasm32-unknown-unknown/wasm-release/attn_saes.wasm

rm -rf web/dist
mkdir -p web/dist
"$bindgen" --target web --no-typescript --out-dir web/dist "$wasm"
if [ "${WASM_OPT:-0}" = 1 ] && command -v wasm-opt > /dev/null; then
    # The features rustc enables by default for wasm32-unknown-unknown, and SIMD, which
    # .cargo/config.toml adds (not --all-features: that lets wasm-opt emit types browsers
    # reject). Older binaryen may not know one of them: keep the unoptimised file then.
    features="--enable-bulk-memory --enable-multivalue --enable-mutable-globals \
        --enable-nontrapping-float-to-int --enable-reference-types --enable-sign-ext \
        --enable-simd"
    # shellcheck disable=SC2086
    if wasm-opt -Oz $features web/dist/attn_saes_bg.wasm -o web/dist/opt.wasm; then
        mv web/dist/opt.wasm web/dist/attn_saes_bg.wasm
    else
        echo "wasm-opt failed; keeping the unoptimised wasm" >&2
        rm -f web/dist/opt.wasm
    fi
fi
cp web/index.html web/read-body.js web/live.js web/live-worker.js web/dist/
raw=$(stat -c %s web/dist/attn_saes_bg.wasm)
gz=$(gzip -9 -c web/dist/attn_saes_bg.wasm | wc -c)
echo "web/dist: attn_saes_bg.wasm $raw bytes ($gz gzipped)"

# The inference bundle (web/dist/live/): the LM and SAE in burn, which the page imports only
# when someone loads a model. WEB_LIVE=0 skips it.
if [ "${WEB_LIVE:-1}" = 1 ]; then
    cargo rustc --lib --target wasm32-unknown-unknown --profile wasm-live --features web-live \
        --crate-type cdylib
    staged=$target_dir/wasm32-unknown-unknown/wasm-live/attn_saes_live.wasm
    cp "$target_dir/wasm32-unknown-unknown/wasm-live/attn_saes.wasm" "$staged"
    "$bindgen" --target web --no-typescript --out-dir web/dist/live "$staged"
    raw=$(stat -c %s web/dist/live/attn_saes_live_bg.wasm)
    gz=$(gzip -9 -c web/dist/live/attn_saes_live_bg.wasm | wc -c)
    echo "web/dist/live: attn_saes_live_bg.wasm $raw bytes ($gz gzipped)"
fi
