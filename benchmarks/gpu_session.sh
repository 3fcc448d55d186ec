#!/usr/bin/env bash
# One session on a lent NVIDIA GPU (see README, "Cuttlefish at full width on a GPU"). From the repository root:
#   bash benchmarks/gpu_session.sh               # CUDA smoke tests, the two runs side by side, packing, benchmark
#   STAGES="probe" bash benchmarks/gpu_session.sh  # only the seconds per epoch of the real recipe
#   TINY=1 bash benchmarks/gpu_session.sh                        # every stage in seconds, on a CPU, to try it
# Everything lands in $OUT (default /tmp/gpu_session): logs, the CUDA benchmark table and the two run
# directories (best weights in float16, no checkpoints) packed in 15 MB parts. Nothing is downloaded: packages
# the GPU image lacks travel as wheels in .gpu/wheels, Fashion-MNIST in .gpu/data/fashion-mnist.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
STAGES=${STAGES:-tests train pack bench}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1

if [[ "${TINY:-0}" != 1 ]] && compgen -G ".gpu/wheels/*.whl" >/dev/null; then  # wheels are for the GPU image
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpu_site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/gpu_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[[ -d .gpu/data ]] && export ZOO_DATA_DIR=$PWD/.gpu/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

RUN_ARGS=(log.progress=false log.tensorboard=false)
TRAIN_LIMIT=${TRAIN_LIMIT:-300}  # one command may run 10 minutes on the lent machine
# EPOCHS=90 MILESTONES=45,68 lengthen both runs alike (the 60-epoch recipe stopped before its switch fired).
SCHEDULE=(${EPOCHS:+epochs=$EPOCHS} ${MILESTONES:+schedule.milestones=[$MILESTONES]})
if [[ "${TINY:-0}" == 1 ]]; then  # the same stages at toy size, to check the script before renting a GPU
  RUN_ARGS+=(epochs=2 task.args.train_subset=1024 task.args.holdout=512 'batch.stages=[[0,128]]'
             'model.args.widths=[8,16,32,64]')
  BENCH=(--quick)
else
  BENCH=()
fi

train() {  # recipe, run dir, extra overrides...
  local recipe=$1 run=$2; shift 2
  timeout "$TRAIN_LIMIT" $PY -m training.cli train --recipe "$recipe" --run-dir "$run" "${RUN_ARGS[@]}" "$@" \
    > "$run.log" 2>&1
  echo "$recipe: exit $?, $(grep -c '^epoch' "$run.log") epochs; last: $(grep '^epoch' "$run.log" | tail -1)"
}

for stage in $STAGES; do
  echo "== $stage $(date +%T)"
  case $stage in
    probe)  # seconds per epoch of the real recipe, to choose the epoch budget
      mkdir -p runs && train fmnist_resnet18_full_width_cuttlefish runs/gpu_probe epochs=3
      grep -o 'epoch_seconds [0-9.]*' runs/gpu_probe.log ;;
    tests)
      timeout 90 $PY -m pytest -q -s -p no:cacheprovider tests/training/test_cuda.py > "$OUT/cuda_tests.log" 2>&1
      echo "CUDA tests: exit $?"; tail -3 "$OUT/cuda_tests.log" ;;
    bench)
      ranks=(); [[ -f runs/gpu_cuttlefish/best/run.json ]] && ranks=(--ranks-from cf_resnet18=runs/gpu_cuttlefish)
      timeout 150 $PY benchmarks/cuttlefish.py --repeats 5 --device "$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" \
        "${ranks[@]}" "${BENCH[@]}" --out "$OUT/cuttlefish_cuda.md"
      echo "benchmark: exit $?" ;;
    train)  # the Cuttlefish run and its full-rank twin at once: each alone leaves the GPU partly idle
      mkdir -p runs
      train fmnist_resnet18_full_width_cuttlefish runs/gpu_cuttlefish "${SCHEDULE[@]}" & first=$!
      train fmnist_resnet18_full_width runs/gpu_full_rank "${SCHEDULE[@]}" & second=$!
      wait "$first" "$second" ;;  # by PID: a bare `wait` would also wait for the log's tee
    pack)  # float16 best weights (small enough to bring back), logs, no checkpoints, in 15 MB parts
      for run in runs/gpu_cuttlefish runs/gpu_full_rank; do
        [[ -f $run/best/model.safetensors ]] && $PY -c "
import sys; from safetensors.torch import load_file, save_file
path = sys.argv[1]; save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}, path, metadata={'format': 'pt'})" \
          "$run/best/model.safetensors"
        [[ -f $run.log ]] && mv "$run.log" "$run/train.log"
      done
      tar czf - --exclude=checkpoints runs/gpu_cuttlefish runs/gpu_full_rank | split -b 15m - "$OUT/runs.tar.gz.part-"
      ls -la "$OUT" ;;
  esac
done
echo "== done $(date +%T)"
