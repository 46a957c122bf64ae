#!/usr/bin/env bash
# Paper, Appendix B.9: CIFAR-10, ResNet-50 (CIFAR stem), 1000 epochs, batch 512, LARS with lr 1.5 x B/256,
# temperature 0.5, colour strength 0.5, no blur. Paper: 94.0% linear accuracy (supervised ResNet-50: 95.1%).
# Needs: 1 GPU (bf16, ~20 GB at batch 512), several days; more GPUs: prefix with torchrun --nproc_per_node=K.
# Not measured here.
# Re-running resumes from the checkpoint. Extra arguments go to simclr.py.
set -euo pipefail
cd "$(dirname "$0")/.."
name=cifar10_resnet50
resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
python simclr.py --dataset cifar10 --arch resnet50 --batch-size 512 --num-epochs 1000 --cosine-anneal --base-lr 1.5 --temperature 0.5 --filename "$name.pth" "${resume[@]}" "$@"
python lbfgs_linear_clf.py --load-from "$name.pth"
