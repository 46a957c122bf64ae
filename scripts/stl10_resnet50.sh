#!/usr/bin/env bash
# STL-10: pretraining on train+unlabeled (105k images, 96x96, STL stem), ResNet-50, 1000 epochs.
# The paper does not pretrain on STL-10 (it is a transfer target, Table 8). Needs: 1-4 GPUs, days. Not measured here.
# Re-running resumes from the checkpoint. Extra arguments go to simclr.py.
set -euo pipefail
cd "$(dirname "$0")/.."
name=stl10_resnet50
resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
python simclr.py --dataset stl10 --arch resnet50 --batch-size 512 --num-epochs 1000 --cosine-anneal --filename "$name.pth" "${resume[@]}" "$@"
python lbfgs_linear_clf.py --load-from "$name.pth" --overwrite
