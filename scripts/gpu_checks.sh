#!/usr/bin/env bash
# Everything a GPU session must learn, in one command of at most 9 minutes on one H200, each step under its own
# time limit (killed if it hangs), the logs in OUT_DIR (the device's $OUT: two files, checks.log and summary.md)
# and one summary table at the end. What each step proves (README, "On GPUs"):
#   data      the data the steps use: DATASET_PATHS's cifar10 when it exists, else 50,000 random 32x32 images
#             in torchvision's pickles; a 224 px JPEG tree for the image-tree input
#   equal     CUDA = CPU: keyed draws and crop boxes over 1M keys, augmentation pixels (fp32, TF32 off), --decode
#             gpu's batched nvJPEG decode against PIL's pixels, one fp32 step's loss, gradients and LARS update;
#             bf16 against fp32; host syncs over 5 steps (sync debug mode)
#   tests     the whole test suite on the GPU machine: the CPU tests, and the CUDA ones skipped elsewhere
#             (draws on CUDA, a resume on CUDA within tolerance, 2 ranks on one GPU: the gather and SyncBN)
#   speed     ResNet-18 at 32 px and ResNet-50 at 224 px: the step with its augmentation against the ceiling
#             (random tensors), FLOPs a step, TFLOP/s against the measured bf16 matmul peak
#   compile   --compile against eager: the same loss and gradients, and the speed of both
#   memory    bench/memory.py: ResNet-50 at 224 px, the largest batch that fits, plain and with --chunk-size
#   tree      bench/tree_loader.py on the JPEG tree: images/s of the image-tree input (workers, and --decode
#             gpu's path) against the ResNet-50 step
#   epoch     two epochs of simclr.py on cifar10 at batch 512 (images/s in its CSV)
#   smoke     torchrun (DDP, 1 process) 1 epoch, resumed to 2, against a plain 2-epoch run; then
#             gradient_linear_clf.py and finetune.py on its checkpoint
#
#   bash scripts/gpu_checks.sh OUT_DIR [DATASET_PATHS]
#   DEVICE=cpu QUICK=1 bash scripts/gpu_checks.sh /tmp/gpu_checks     # the dry run: every step at tiny sizes
set -u
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-runs/gpu_checks}")
paths=$(realpath -m "${2:-dataset-paths.json}")
device=${DEVICE:-cuda}
mkdir -p "$out"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu_checks.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
log=$out/checks.log summary=$out/summary.md data=$scratch/data
export PYTHONUNBUFFERED=1
: >"$log"
printf '| step | check | result | figures |\n|---|---|---|---|\n' >"$summary"
small=$(realpath dataset-paths.json)  # the bundled cifar10-sample for the pretraining runs of the smoke step
if [ "${QUICK:-0}" = 1 ]; then  # the dry run: every command at sizes a 2-core CPU runs in minutes
    small=$data/tiny.json  # 64 images
    keys=100000 pixels=16 batch=8 steps=2 tests=(-k cuda) mem=(--batch-sizes 8 --chunk-size 4) workers=1
    tree=(--arch resnet18 --batch-size 8 --num-workers 1 --batches 1 --rounds 1)
    epoch=(--dataset cifar10-sample --dataset-paths "$small" --batch-size 32 --num-epochs 1)
    smoke=(--batch-size 32 --chunk-size 8)
    limits=(60 60 60 60 1 40 60 60 120)
else
    keys=1000000 pixels=256 batch=512 steps=20 workers=8
    tests=($(python -c "import xdist" 2>/dev/null && printf "%s " -n 8))  # pytest-xdist where installed
    mem=(--arch resnet50 --stem imagenet --image-size 224 --batch-sizes 256 512 1024 2048 --chunk-size 256)
    tree=(--arch resnet50 --batch-size 256 --num-workers 14 --batches 4 --rounds 1)
    epoch=(--dataset cifar10 --dataset-paths "$data/paths.json" --batch-size 512 --num-epochs 2)
    smoke=(--batch-size 128 --chunk-size 32)
    limits=(30 50 100 60 100 50 50 45 60)  # 545 s at most
fi

row() {  # row STEP CHECK RESULT FIGURES: one line of the summary table
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >>"$summary"
}

step() {  # step NAME LIMIT_S COMMAND...: run it killed past its limit; its output to checks.log, its rows to the table
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit} s): $*" | tee -a "$log"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$scratch/$name.out" 2>&1
    rc=$?
    tr '\r' '\n' <"$scratch/$name.out" | grep -v -e '^\s*$' -e '%|' >>"$log"  # no progress bars
    grep '^ROW|' "$scratch/$name.out" | while IFS='|' read -r _ check result figures; do
        row "$name" "$check" "$result" "$figures"
    done
    case $rc in
        0) ;;
        124|137) row "$name" "(the step)" FAIL "time limit of $limit s" ;;
        *) row "$name" "(the step)" FAIL "exit $rc: $(grep -v '^ROW|' "$scratch/$name.out" | tail -n 1 | tr '|' '/')" ;;
    esac
    echo "   exit $rc after $(($(date +%s) - start)) s" | tee -a "$log"
    return $rc
}

{ date -u; git rev-parse --short HEAD; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  echo "$(nproc) CPUs; /dev/shm: $(df -h /dev/shm | tail -n 1)"; } >>"$log" 2>&1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
row env machine info "${gpu:-no GPU} ($device), $(nproc) CPUs, $(python -c 'import torch; print("torch", torch.__version__)'), \
commit $(git rev-parse --short HEAD), $(date -u +%F)"

step data "${limits[0]}" python scripts/gpu_checks.py data "$data" --paths "$paths"
step equal "${limits[1]}" python scripts/gpu_checks.py equal --device "$device" --keys "$keys" --pixels "$pixels" \
    --batch "$((batch / 2))"
step tests "${limits[2]}" python -m pytest -q -p no:cacheprovider "${tests[@]}" tests \
    && row tests "the suite" ok "$(grep -E '(passed|failed)' "$scratch/tests.out" | tail -n 1)"
step speed "${limits[3]}" python scripts/gpu_checks.py speed --device "$device" --batch "$batch" --steps "$steps"
if [ "$device" = cuda ]; then
    step compile "${limits[4]}" python scripts/gpu_checks.py compile --device cuda --batch "$batch" --steps "$steps"
else
    row compile "compile = eager" info "skipped on the CPU (Inductor compiles for minutes there; the suite's \
test_compile_trains_the_same_model compares on CPU)"
fi
step memory "${limits[5]}" python bench/memory.py --device "$device" --steps 2 "${mem[@]}" \
    && row memory "largest batch" info "$(grep -E '^batch [0-9]+, chunk' "$scratch/memory.out" | grep -v 'out of memory' \
        | sort -t' ' -k2,2n | awk -F: '{last[$1 ~ /chunk off/] = $0} END {print last[1] "; " last[0]}')"
step tree "${limits[6]}" python bench/tree_loader.py --device "$device" --dataset imagenet \
    --dataset-paths "$data/paths.json" "${tree[@]}" \
    && row tree "input vs step" info "$(grep -E '^\((b|e|f)\) .*% of input|^training step alone' "$scratch/tree.out" | tr -s ' ' \
        | paste -sd ';' | sed 's/;/; /g') views/s"
step epoch "${limits[7]}" python simclr.py --arch resnet18 --test-freq 0 \
    --num-workers "$workers" --device "$device" --filename "$scratch/epoch.pth" "${epoch[@]}" \
    && row epoch "images/s" info "$(python -c "import csv, sys; r = list(csv.DictReader(open(sys.argv[1])))[-1]; \
print(f'{float(r[\"images_per_s\"]):,.0f} images/s at step {r[\"step\"]}, loss {float(r[\"loss\"]):.3f}')" \
        "$scratch/epoch.csv")"
cat "$scratch/epoch.csv" >>"$log" 2>/dev/null
common=(--dataset cifar10-sample --dataset-paths "$small" --arch resnet18 --test-freq 1 --num-workers 2
        --device "$device" "${smoke[@]}")
step smoke "${limits[8]}" bash -c "python -m torch.distributed.run --standalone --nproc_per_node=1 simclr.py \
    ${common[*]} --num-epochs 1 --filename $scratch/smoke.pth \
    && python -m torch.distributed.run --standalone --nproc_per_node=1 simclr.py ${common[*]} --num-epochs 2 \
        --filename $scratch/smoke.pth --resume \
    && python simclr.py ${common[*]} --num-epochs 2 --filename $scratch/straight.pth \
    && python scripts/gpu_checks.py same $scratch/straight.pth $scratch/smoke.pth \
    && python gradient_linear_clf.py --load-from $scratch/smoke.pth --batch-size 64 --num-epochs 1 --num-workers 2 \
        --device $device && python finetune.py --load-from $scratch/smoke.pth --label-fraction 0.1 --num-epochs 1 \
        --num-workers 2 --device $device"
echo
cat "$summary"
echo "logs: $log, $summary"
