#!/usr/bin/env bash
# He et al. 2016 Fig. 6 on Fashion-MNIST: trains plain-20/56 and ResNet-20/56 one after another
# (configs/fashion_mnist_degradation.py), then draws their training error in one figure.
#
#   launch/degradation_study.sh [OUT_DIR] [--config.field=value ...]
#
# OUT_DIR (default results/degradation) gets one workdir per network, report.png/report.md and
# train_top1_error.png. About 25-30 minutes on 2 cores. Re-running resumes each network from its
# newest checkpoint (a finished one is only evaluated again), so an interrupted study goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
out=${1:-results/degradation}
[[ $# -gt 0 ]] && shift
runs=()
for model in cifar_plain20 cifar_plain56 cifar_resnet20 cifar_resnet56; do
  echo "== $model -> $out/$model"
  "$python" -m resnet_jax.main --config="configs/fashion_mnist_degradation.py:$model" \
    --workdir="$out/$model" "$@"
  runs+=("$out/$model")
done
"$python" -m resnet_jax.report "${runs[@]}" --out "$out" --metric train/top1 --error --smooth 5
