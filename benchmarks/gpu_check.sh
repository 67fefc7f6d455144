#!/usr/bin/env bash
# The GPU checks in one call of at most 10 minutes, on a machine whose python3 has torch, lightning, onnx and
# onnxruntime but not jsonargparse (which `rnnlm fit` needs), run from the repository root:
#
#   bash benchmarks/gpu_check.sh            # CUDA tests (30 s on an H200), the CUDA bench table (about 1 min)
#   bash benchmarks/gpu_check.sh recipe     # then configs/gpu.yaml: rnnlm fit (96 s there), export, rnnlm eval
#
# Without network there, carry the wheels and the corpus. Here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
#   mkdir -p data/corpora && cp /path/to/tinyshakespeare.txt data/corpora/shakespeare.txt
# and carry .whl and data/corpora. Logs, the bench report and the run's metrics land in $OUT (default /tmp/gpu_check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && PYTHONPATH=src:/tmp/site
fi
nvidia-smi -L
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"

echo "== CUDA tests"
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider -m cuda tests/test_graphed.py tests/test_bptt.py tests/test_gated.py 2>&1 | tee "$OUT/tests.log"

echo "== bench: benchmarks/gpu.py"
timeout 300 python3 benchmarks/run.py gpu 2>&1 | tee "$OUT/bench.log"
cp benchmarks/results/*-gpu.md "$OUT/" 2>/dev/null

[ "${1:-}" = recipe ] || exit 0
echo "== recipe: configs/gpu.yaml"
[ -f data/corpora/shakespeare.txt ] || { echo "skipped: carry data/corpora/shakespeare.txt (tinyshakespeare)"; exit 0; }
python3 -m rnnlm prepare --config configs/gpu.yaml >/dev/null || exit 1  # the corpus prepared, untimed
rm -rf runs/gpu  # a machine kept warm still has an earlier call's run
start=$(date +%s)
timeout 420 python3 -m rnnlm fit --config configs/gpu.yaml --trainer.enable_progress_bar false 2>&1 | tee "$OUT/fit.log"
echo "rnnlm fit: $(( $(date +%s) - start )) s of wall time"
cp runs/gpu/logs/version_0/metrics.csv "$OUT/" 2>/dev/null
python3 -m rnnlm export runs/gpu/checkpoints/best.ckpt --out /tmp/export-gpu \
    && python3 -m rnnlm eval /tmp/export-gpu --text data/corpora/shakespeare.txt --val | tee "$OUT/eval.log"
