#!/usr/bin/env bash
# Screenshots of the real desktop app under Xvfb, one per view, into docs/ (or $1):
#   scripts/screenshot-app.sh [OUT_DIR] [RUN_DIR]
# Needs Debian's xvfb, imagemagick (import, convert) and a built release binary
# (cargo build --release). RUN_DIR defaults to runs/latest (the main job's run). With
# COMPARE=OTHER_RUN, also app-compare.png: Curves comparing RUN_DIR with OTHER_RUN. With
# FEATURE=HEAD,FEATURE, the Features view shows that feature (app --feature), and with
# COMPARE too, its closest features in OTHER_RUN.
# Fails when a screenshot is blank (fewer than 50 distinct colours).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs}
run=${2:-runs/latest}
bin=${CARGO_TARGET_DIR:-target}/release/attn-saes
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -d "$run" ] || { echo "no run at $run: cargo run --release -- train --headless" >&2; exit 1; }
mkdir -p "$out"
display=:$((90 + RANDOM % 9))
Xvfb "$display" -screen 0 1400x900x24 -nolisten tcp &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
sleep 2
export DISPLAY=$display
# A private config dir: the screenshots do not depend on (or change) the user's saved state.
export XDG_CONFIG_HOME=$(mktemp -d) XDG_DATA_HOME=$(mktemp -d)
shots="curves features train"
[ -n "${COMPARE:-}" ] && shots+=" compare"
for shot in $shots; do
    if [ "$shot" = compare ]; then
        "$bin" app "$run" --compare "$COMPARE" --view curves &
    elif [ "$shot" = features ] && [ -n "${FEATURE:-}" ]; then
        # With COMPARE too, the feature's closest features in that run show.
        "$bin" app "$run" --view features --feature "$FEATURE" ${COMPARE:+--compare "$COMPARE"} &
    else
        "$bin" app "$run" --view "$shot" &
    fi
    app=$!
    sleep "${WAIT:-12}"
    png="$out/app-$shot.png"
    import -window root "$png"
    kill $app 2>/dev/null || true
    wait $app 2>/dev/null || true
    colours=$(convert "$png" -format %k info:)
    echo "$png: $colours colours"
    [ "$colours" -ge 50 ] || { echo "$png looks blank" >&2; exit 1; }
done
