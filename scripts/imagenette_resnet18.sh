#!/usr/bin/env bash
# Imagenette (10 ImageNet classes), ResNet-18 (ImageNet stem) at 128 px, 800 epochs: the setting of lightly's
# Imagenette benchmark (docs/source/getting_started/benchmarks/imagenette_benchmark.py, results of 4.5.2023),
# which reports for SimCLR, quoted: "0.889" kNN top-1 (k=200, t=0.1) on val after 800 epochs at batch 256,
# "193.5 Min" on one A6000. Then L-BFGS linear evaluation on val.
# Followed from lightly's code: batch 256, SGD momentum 0.9, lr 0.06 x B/256, weight decay 5e-4, cosine decay over
# all epochs with no warmup, temperature 0.5 (their NTXentLoss default) with the loss as a mean over the 2N anchors
# (--loss-scale paper), colour strength 0.5 with blur (p=0.5, sigma in [0.1, 2]), head Linear-BN-ReLU-Linear-BN
# (512-512-128), kNN with k=200, t=0.1. These replace this repository's Imagenette recipe (the paper's ImageNet
# one: LARS, 0.075 x sqrt(B), wd 1e-6, temperature 0.1, s=1.0), which --optimizer lars etc. bring back.
# Differs: no weight decay on BN parameters and biases (lightly decays all); BN statistics over both views in
# one forward (theirs: one forward per view); cosine per step (theirs per epoch); blur kernel 10% of the side
# (theirs PIL's); crops from our 128x128 copy (theirs from the 160 px version); kNN every 10 epochs (theirs every
# epoch), and their figure is the best epoch on val, ours the last (the CSV has every value). Evaluation as
# theirs: the 128 px images whole (theirs: resize 128, centre crop 128).
# Needs: 1 GPU (a few GB), a few hours. Not measured here. Re-running resumes. Extra arguments go to simclr.py.
set -euo pipefail
cd "$(dirname "$0")/.."
name=imagenette_resnet18
resume=(); [ -f "checkpoint/$name.pth" ] && resume=(--resume)
python simclr.py --dataset imagenette --arch resnet18 --batch-size 256 --num-epochs 800 --cosine-anneal \
  --warmup-epochs 0 --optimizer sgd --base-lr 0.06 --lr-scaling linear --weight-decay 5e-4 --temperature 0.5 \
  --loss-scale paper --jitter-strength 0.5 --blur --test-freq 10 --knn-k 200 --filename "$name.pth" \
  "${resume[@]}" "$@"
python lbfgs_linear_clf.py --load-from "$name.pth" --overwrite
