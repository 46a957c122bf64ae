#!/usr/bin/env bash
# Paper Figure 9: linear accuracy of ResNet-50 on ImageNet for batch sizes 256..8192 and 100..800 epochs.
# Each cell is a full pretraining + linear evaluation: weeks of GPU time in all. Not measured here.
# DATASET=cifar10 ARCH=resnet18 scripts/batch_size_epochs.sh runs the same grid on CIFAR-10.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${DATASET:-imagenet}; arch=${ARCH:-resnet50}
for epochs in 100 200 400 800; do
  for batch in 256 512 1024 2048 4096 8192; do
    name="fig9_${dataset}_${arch}_b${batch}_e${epochs}"
    resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
    python simclr.py --dataset "$dataset" --arch "$arch" --batch-size "$batch" --num-epochs "$epochs" \
      --cosine-anneal --test-freq 0 --filename "$name.pth" "${resume[@]}" "$@"
    if [ "$dataset" = imagenet ]; then
      python gradient_linear_clf.py --load-from "$name.pth" --overwrite --nesterov
    else
      python lbfgs_linear_clf.py --load-from "$name.pth" --overwrite
    fi
  done
done
