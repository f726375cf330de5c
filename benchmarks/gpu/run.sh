#!/usr/bin/env bash
# The GPU check of issue #14, prepared to run in one call on a lent GPU machine (≤ 10 minutes;
# see README.md here for the call). Everything it measures lands under $OUT.
set -uo pipefail
: "${OUT:?run on the device machine, where \$OUT is the folder that comes back}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
# 1. Step-time ratios (synthetic batches, ~1-2 minutes): first, so a slow suite cannot starve it.
timeout 180 python3 benchmarks/step_ratios.py --device cuda --out "$OUT" --profile || echo "step_ratios: exit $?"
# 2. The paper recipe for ResNet-32 on the carried CIFAR-10 subset: 5 runs of 30 epochs (a run
#    cut off by the timeout leaves no row; the rows before it stay).
timeout 330 python3 -m leantrain bench benchmarks/gpu/paper-gpu.toml --data-dir .gpu-data \
    --results-dir "$OUT" --out-dir /tmp/runs --no-progress || echo "bench: exit $?"
ls -la "$OUT"
