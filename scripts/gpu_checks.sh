#!/usr/bin/env bash
# The GPU measurements that README's Results still lack, in one command of at most
# about 8 minutes on one H100/H200, each step under its own time limit so that one that hangs or fails
# does not cost the others:
#   throughput  bench/throughput.py, batch 512: per-image workers vs batched on-device views vs the
#               compute ceiling (the 1.25x target), and peak memory at batch 256/512/1024/4096
#   memory      bench/memory.py: peak memory and views/s against batch size, plain and with
#               --chunk-size 512, up to the whole CIFAR-10 training set (the largest batch that fits)
#   epoch       two epochs of simclr.py at batch 512 on DATASET (images/s of the second against the ceiling)
#   smoke       torchrun with 1 process (DDP over NCCL, gradient caching) on the bundled sample, then
#               gradient_linear_clf.py and finetune.py on its checkpoint; with 2+ GPUs also 2 processes (the gather
#               across ranks and SyncBN, which 1 process does not exercise)
#   learning    bench/learning.py for a few epochs: linear accuracy, pretrained vs random init
#
#   bash scripts/gpu_checks.sh [OUT_DIR [DATASET_PATHS]]     # logs in OUT_DIR (default: runs/gpu_checks)
#   DEVICE=cpu QUICK=1 bash scripts/gpu_checks.sh /tmp/gpu_checks    # dry run of every command on CPU
#
# DATASET (default: cifar10; cifar10-sample with QUICK=1) must be in DATASET_PATHS (default: the repository's
# dataset-paths.json); when its folder is missing there, the epoch and learning steps say so and are skipped
# (the others use random images or the bundled sample).
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_checks}
paths=$(realpath "${2:-dataset-paths.json}")
device=${DEVICE:-cuda}
mkdir -p "$out" checkpoint
export PYTHONUNBUFFERED=1
if [ "${QUICK:-0}" = 1 ]; then  # every command, tiny sizes
    batch=32 steps=2 rounds=1 mem_sizes="64 128" chunk=32 plain=64 epochs=1 smoke_batch=32 smoke_chunk=8 smoke_epochs=1
    smoke_arch=resnet18  # torchrun gives each CPU process one thread: ResNet-50 would not fit the limit
    limits=(300 300 300 300 600) dataset=${DATASET:-cifar10-sample}
else
    batch=512 steps=30 rounds=2 mem_sizes="512 4096 16384 50000" chunk=512 plain=16384 epochs=4 smoke_batch=128
    smoke_chunk=32 limits=(110 90 80 70 150) dataset=${DATASET:-cifar10} smoke_arch=resnet50 smoke_epochs=2
fi

step() {  # step NAME LIMIT_S COMMAND...: run it with its log in OUT_DIR/NAME.log, print its tail
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" >>"$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(($(date +%s) - start)) s$([ $rc = 124 ] && echo ': TIME LIMIT')"
    tr '\r' '\n' <"$out/$name.log" | grep -v -e '^\s*$' -e '%|' | tail -n 14  # no progress bars
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  nproc; } >"$out/env.log" 2>&1
cat "$out/env.log"
: >"$out/throughput.log"; : >"$out/memory.log"; : >"$out/epoch.log"; : >"$out/smoke.log"; : >"$out/smoke2.log"
: >"$out/learning.log"

step throughput "${limits[0]}" python bench/throughput.py --device "$device" --batch-size "$batch" --steps "$steps" \
    --rounds "$rounds" --num-workers 8 --memory
# shellcheck disable=SC2086  # mem_sizes: several numbers
step memory "${limits[1]}" python bench/memory.py --device "$device" --batch-sizes $mem_sizes --chunk-size "$chunk" \
    --plain-up-to "$plain" --steps 2
have_data=$(python -c "from data.paths import resolve; print(resolve('$dataset', '$paths'))" 2>&1 | tail -n 1)
if [ ! -d "$have_data" ]; then
    echo "== epoch, learning: skipped: ${have_data#*UserError: }"
    echo "   pass a paths file that names it: bash scripts/gpu_checks.sh OUT_DIR paths.json"
fi
rm -f checkpoint/gpu_epoch.*
[ -d "$have_data" ] && step epoch "${limits[2]}" python simclr.py --dataset "$dataset" --dataset-paths "$paths" --arch resnet18 \
    --batch-size "$batch" --num-epochs 2 --test-freq 0 --num-workers 8 --device "$device" --filename gpu_epoch.pth
cat checkpoint/gpu_epoch.csv >>"$out/epoch.log" 2>/dev/null && tail -n 3 checkpoint/gpu_epoch.csv
rm -f checkpoint/gpu_smoke.*
step smoke "${limits[3]}" bash -c "python -m torch.distributed.run --standalone --nproc_per_node=1 simclr.py \
    --dataset cifar10-sample --arch $smoke_arch --batch-size $smoke_batch --chunk-size $smoke_chunk --num-epochs $smoke_epochs \
    --test-freq 1 --num-workers 2 --device $device --filename gpu_smoke.pth && cat checkpoint/gpu_smoke.csv && \
    python gradient_linear_clf.py --load-from gpu_smoke.pth --batch-size 64 --num-epochs $smoke_epochs --num-workers 2 \
    --device $device && python finetune.py --load-from gpu_smoke.pth --label-fraction 0.1 --num-epochs $smoke_epochs \
    --num-workers 2 --device $device"
gpus=$( [ "$device" = cuda ] && nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0)
if [ "$gpus" -ge 2 ]; then
    rm -f checkpoint/gpu_smoke2.*
    step smoke2 "${limits[3]}" python -m torch.distributed.run --standalone --nproc_per_node=2 simclr.py \
        --dataset cifar10-sample --batch-size "$smoke_batch" --num-epochs 2 --test-freq 1 --device cuda \
        --filename gpu_smoke2.pth
else
    echo "== smoke2: skipped ($gpus GPU(s)): the gather across ranks and SyncBN need 2 processes on 2 GPUs"
fi
rm -rf runs/gpu_learning
[ -d "$have_data" ] && step learning "${limits[4]}" python bench/learning.py --dataset "$dataset" --dataset-paths "$paths" --device "$device" \
    --batch-size "$batch" --epochs "$epochs" --num-workers 8 --out-dir runs/gpu_learning
cat runs/gpu_learning/summary.json >>"$out/learning.log" 2>/dev/null
cat runs/gpu_learning/pretrain.csv >>"$out/learning.log" 2>/dev/null
echo "logs: $out"
