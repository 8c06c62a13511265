#!/usr/bin/env bash
# Which CPU decides the last bits? Runs `openradio parity` on this machine and, through qemu-user,
# as other x86-64 CPU models (same binary, same inputs; only what CPUID reports changes, and with
# it the code paths MKL and ATen pick). qemu's TCG emulates up to AVX2, not AVX-512.
#
#   tools/parity_cpu_models.sh [FIXTURES_DIR]          # needs: apt-get install qemu-user
#   MODELS="native Haswell-v4" CASES='*' tools/parity_cpu_models.sh
#
# Prints one line per model: ATen capability, bit-exact tensors, largest difference and a digest
# of openradio's outputs (equal digests: identical bits). Emulation
# is ~30x slower than native, hence the default of the two single-patch cases.
set -euo pipefail
cd "$(dirname "$0")/.."
FIX=${1:-${OPENRADIO_FIXTURES:-../shared/fixtures/official-v2.5}}
MODELS=${MODELS:-"native EPYC-Milan EPYC-Rome Haswell-v4 Skylake-Client-v4 Icelake-Server SandyBridge Nehalem"}
CASES=${CASES:-'*16x16'}
PY=${PY:-.venv/bin/python}
if [ ! -f "$FIX/expected.pt" ]; then
  echo "no parity fixtures at $FIX (pass the folder or set OPENRADIO_FIXTURES)" >&2; exit 2
fi
if [ "$(uname -m)" != x86_64 ] || ! command -v qemu-x86_64 >/dev/null; then
  echo "needs an x86-64 machine with qemu-user (apt-get install qemu-user)" >&2; exit 2
fi
summary='import json, sys
d = json.load(sys.stdin)
s, cap = d["summary"], d["platform"]["aten_cpu_capability"]
print("ATen %-7s  %3d/%-3d bit-exact  max |diff| %-9.3g outputs %s"
      % (cap, s["exact"], s["tensors"], s["max_abs_diff"], s["outputs_digest"]))'
printf '%-20s %s\n' "cpu model" "result (cases: $CASES)"
for m in $MODELS; do
  if [ "$m" = native ]; then run=("$PY"); else run=(qemu-x86_64 -cpu "$m" "$PY"); fi
  # parity exits 1 when a tensor is above the noise bound: still a result to print
  if out=$( { "${run[@]}" -m openradio.cli parity --fixtures "$FIX" --cases "$CASES" --json - 2>/dev/null || true; } \
           | "$PY" -c "$summary" 2>/dev/null); then
    printf '%-20s %s\n' "$m" "$out"
  else
    printf '%-20s %s\n' "$m" "failed (unknown model? see: qemu-x86_64 -cpu help)"
  fi
done
