#!/usr/bin/env bash
# The official single-GPU CIFAR-10 command (google-research/simclr README): ResNet-18, batch 512, 1000 epochs,
# LARS lr 1.0 x B/256, weight decay 1e-4, temperature 0.5, colour strength 0.5, no blur. Official: about 91% linear.
# Needs: 1 GPU (~8 GB at batch 512 in bf16), about a day. Not measured here at 1000 epochs (see README results).
# Re-running resumes from the checkpoint. Extra arguments go to simclr.py.
set -euo pipefail
cd "$(dirname "$0")/.."
name=cifar10_resnet18
resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
python simclr.py --dataset cifar10 --arch resnet18 --batch-size 512 --num-epochs 1000 --cosine-anneal --base-lr 1.0 --weight-decay 1e-4 --temperature 0.5 --jitter-strength 0.5 --no-blur --filename "$name.pth" "${resume[@]}" "$@"
python lbfgs_linear_clf.py --load-from "$name.pth" --overwrite
