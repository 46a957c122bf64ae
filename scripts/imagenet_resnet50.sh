#!/usr/bin/env bash
# Paper, Sec. B.1 / Table 6: ImageNet, ResNet-50, batch 4096, LARS lr 0.3 x B/256 (4.8), weight decay 1e-6,
# temperature 0.1, colour strength 1.0 with blur, 10 warmup epochs, 1000 epochs, global BN (--sync-bn under torchrun).
# Then the linear protocol of B.6: SGD Nesterov, batch 4096, 90 epochs. Paper: 69.3% top-1 / 89.0% top-5.
# Needs: 8+ GPUs with 80 GB (or --chunk-size on fewer), weeks of GPU time. Run on one node of 8:
#   NPROC=8 scripts/imagenet_resnet50.sh      (set NPROC=1 for a single GPU). Not measured here.
# Re-running resumes from the checkpoint. Extra arguments go to simclr.py.
set -euo pipefail
cd "$(dirname "$0")/.."
name=imagenet_resnet50
resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
torchrun --nproc_per_node=${NPROC:-8} simclr.py --dataset imagenet --arch resnet50 --batch-size 4096 --num-epochs 1000 --cosine-anneal --base-lr 0.3 --test-freq 0 --num-workers 32 --filename "$name.pth" "${resume[@]}" "$@"
python gradient_linear_clf.py --load-from "$name.pth" --overwrite --nesterov --num-workers 32
