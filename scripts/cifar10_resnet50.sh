#!/usr/bin/env bash
# CIFAR-10, ResNet-50 (CIFAR stem), 1000 epochs: the hyper-parameters of ae-foster/pytorch-simclr's reproduction,
# 93.5% linear (L-BFGS): batch 512, LARS lr 1.5 x B/256, weight decay 1e-6, temperature 0.5, colour strength 0.5,
# no blur, cosine decay, and its loss at the paper's scale (mean over 2N: --loss-scale paper).
# Not theirs: BN parameters and biases excluded from LARS and weight decay, 10 warmup epochs (the paper's).
# The paper's 94.0% (B.9): batch 1024, lr from {0.5, 1.0, 1.5} (which one is not stated), temperature from
# {0.1, 0.5, 1.0}, the other settings as ImageNet (weight decay 1e-6); e.g. --batch-size 1024 --loss-scale official.
# Needs: 1 GPU (bf16, ~20 GB at batch 512), several days; more GPUs: prefix with torchrun --nproc_per_node=K.
# Not measured here. Re-running resumes from the checkpoint. Extra arguments go to simclr.py.
set -euo pipefail
cd "$(dirname "$0")/.."
name=cifar10_resnet50
resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
python simclr.py --dataset cifar10 --arch resnet50 --batch-size 512 --num-epochs 1000 --cosine-anneal --base-lr 1.5 \
  --weight-decay 1e-6 --temperature 0.5 --loss-scale paper --filename "$name.pth" "${resume[@]}" "$@"
python lbfgs_linear_clf.py --load-from "$name.pth" --overwrite
