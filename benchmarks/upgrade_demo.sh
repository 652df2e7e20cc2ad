#!/usr/bin/env bash
# The mlx upgrade matrix on this machine, as run for the README's "Gating an mlx upgrade":
# build the synthetic models once (with the oldest mlx-lm of the matrix), run the example perf
# suite under each mlx / mlx-lm pair, rerun the newest pair as a same-versions control, then
# compare and report. Heavy: about 10 minutes of both CPU cores; nothing else should run.
set -euo pipefail
cd "$(dirname "$0")/.."
# A cache of its own: a model folder converted under transformers 5 (mlx-lm >= 0.30) cannot
# be loaded by the transformers 4 that mlx-lm <= 0.29 needs (tokenizer_class
# "TokenizersBackend"); the `synth` environment converts with the oldest pair instead.
export MLXPERF_CACHE_DIR="${MLXPERF_CACHE_DIR:-/tmp/mlxperf-cache-matrix}"
MATRIX=(results/mlx026.json results/mlx029.json results/mlx030.json results/mlx031.json
        results/mlx032.json)
# The example suite's two tests; tests/perf also holds longer workload examples.
ONLY=(-- -k "test_prompt_and_decode or test_decode_at_depth")

rm -f results/mlx0*.json
tox -e synth,mlx026,mlx029,mlx030,mlx031,mlx032 "${ONLY[@]}"
# The same versions in a separate process: how far medians move when nothing changed.
mv results/mlx032.json results/mlx032-first.json
tox -e mlx032 "${ONLY[@]}"
mv results/mlx032.json results/mlx032-control.json
mv results/mlx032-first.json results/mlx032.json

set +e
mlxperf compare results/mlx032.json results/mlx032.json
echo "self-comparison: exit $?"
mlxperf compare results/mlx032.json results/mlx032-control.json
echo "same versions, two processes: exit $?"
mlxperf compare "${MATRIX[@]}"
echo "matrix against mlx 0.26.5: exit $?"
mlxperf report "${MATRIX[@]}" -o results/report.html --markdown results/report.md
# A real slowdown: judged against mlx 0.32.4, the older mlx 0.26.5 / mlx-lm 0.26.4 fails.
mlxperf compare results/mlx032.json results/mlx026.json
echo "mlx 0.32.4 -> 0.26.5: exit $?"
