#!/usr/bin/env bash
# The GPU suite in one call, at most 8 minutes on one H200: bf16 training samples/s and MFU of
# the tiny, small, base and large presets, beam-search users/s, and a quality run of the small
# preset on Beauty. Writes gpu.json (or the file given) and prints it.
#   bash benchmarks/gpu.sh [OUT.json] [--tiny]     (--tiny: the script's own check, on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu.json}"
shift || true
exec python benchmarks/gpu_suite.py --out "$out" "$@"
