#!/usr/bin/env bash
# Where does libdiffusion's forward spend its time? Samples one engine run with perf (timer-based
# cpu-clock, so it works without hardware counters, e.g. in a VM) and buckets the stacks by kernel.
#
#   bash bench/profile.sh            # batch 8, ~15 s of forwards
#   PROFILE_BATCH=1 PROFILE_SECONDS=10 bash bench/profile.sh
#
# Needs perf (Debian: apt-get install linux-perf) and the library built (make build). Uses the
# same venv as run.sh (BENCH_VENV, default bench/.venv). Writes bench/profile.json (not committed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${BENCH_VENV:-$here/.venv}"
batch="${PROFILE_BATCH:-8}"
seconds="${PROFILE_SECONDS:-15}"
threads="${BENCH_THREADS:-2}"
freq="${PROFILE_FREQ:-99}"
export DIFFUSION_LIBRARY="${DIFFUSION_LIBRARY:-$root/.build/release/libdiffusion.so}"

command -v perf >/dev/null || { echo "profile: perf not found (apt-get install linux-perf)" >&2; exit 1; }
perf record -q -e cpu-clock -o /dev/null true 2>/dev/null \
    || { echo "profile: perf record does not work here (see perf_event_paranoid)" >&2; exit 1; }
[ -f "$DIFFUSION_LIBRARY" ] || { echo "profile: $DIFFUSION_LIBRARY not found; run make build" >&2; exit 1; }
BENCH_SETUP_ONLY=1 bash "$here/run.sh"

work="$(mktemp -d /tmp/diffusion-profile-XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$root"
"$venv/bin/python" "$here/bench_unet.py" --save-model "$work" --batches "$batch" >/dev/null
echo "profile: libdiffusion forward, batch $batch, $threads threads, ~$seconds s under perf record" >&2
perf record -q -e cpu-clock -F "$freq" --call-graph dwarf,16384 -o "$work/perf.data" -- \
    "$venv/bin/python" "$here/bench_unet.py" --child libdiffusion --work "$work" --threads "$threads" \
    --batches "$batch" --seconds "$seconds"
"$venv/bin/python" - "$work/result_libdiffusion.json" "$batch" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["batches"][sys.argv[2]]
print(f"median {r['median_ms']:.1f} ms, min {r['min_ms']:.1f} ms over {r['reps']} reps (under perf), "
      f"other load {100 * r['other_load']:.0f}%")
PY
perf script -i "$work/perf.data" 2>/dev/null > "$work/perf.txt"
"$venv/bin/python" "$here/perf_breakdown.py" "$work/perf.txt" --json "$here/profile.json"
