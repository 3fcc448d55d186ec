#!/usr/bin/env bash
# How the folders in hub/ were produced: train each recipe on a 2x2 torus grid (4 gloo processes), then
# publish the run's best weights, re-evaluated on held-out test data. Run from the repository root.
#   TRAIN=1 bash hub/publish.sh   # retrain first (about 1.5 h on two CPU cores), otherwise publish runs/ as is
# Each folder replaces the published one (--overwrite) and is registered in zoo/manifest.json (--register),
# which the zoo's registry reads; `zoo cards` then renders model_cards/ from the same card data.
set -euo pipefail
ZOO=${ZOO:-.venv/bin/zoo}
train() { .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node 4 -m training.cli train --recipe "$1" log.progress=false; }

FMNIST_USE="Demonstrating and testing the zoo (loading, fine-tuning, Cuttlefish's decisions) on real 28x28 grey clothing images; a small baseline for Fashion-MNIST-like data."
FMNIST_LIMITS="Trained on 20,000 of the 60,000 Fashion-MNIST training images for 10 epochs on a CPU; not a state-of-the-art Fashion-MNIST model (about 92-94 % top-1 is reachable). Expects 28x28 single-channel images normalised with the Fashion-MNIST mean/std; photos of real clothes are out of distribution."

if [[ "${TRAIN:-0}" == 1 ]]; then
  for recipe in fmnist_resnet18_cuttlefish fmnist_resnet18 fmnist_resnet18_cuttlefish_sr fmnist_mrl_nano stardist_mrl_seg_nano; do
    train "$recipe"
  done
fi

$ZOO publish runs/fmnist_resnet18_cuttlefish hub/cf_resnet18_fmnist --overwrite --register cf_resnet18_fmnist.cuttlefish --input-domain fashion-mnist \
  --title "cf_resnet18_fmnist: Cuttlefish ResNet-18 (1/4 width) on Fashion-MNIST" \
  --summary "A CIFAR-style ResNet-18 at a quarter of the width (16-128 channels), trained on Fashion-MNIST with the Cuttlefish switch: the authors' detector (EMA-smoothed stable-rank histories starting at initialisation) with the zoo's convergence preset for ten-epoch runs (the paper's CIFAR preset cannot switch before epoch 16), the paper's rank rule (each layer's stable rank scaled by xi), and each candidate layer timed dense vs factorized on the training device. The switch came after 5 of the 10 epochs (low-rank from the 6th). At the scaled ranks 12 of the 19 candidates would not get smaller, and of the other 7 only layer3.1.conv1 (rank 48 of 64), layer3.1.conv2 (45 of 64) and layer4.0.conv2 (114 of 128) were at least 5 % faster factorized on the CPU it trained on, so the switch factorized those three (decision table below) and the network is 1.02x smaller. For a compressed variant see cf_resnet18_fmnist.cuttlefish_sr." \
  --intended-use "$FMNIST_USE" --limitations "$FMNIST_LIMITS"

$ZOO publish runs/fmnist_resnet18_cuttlefish_sr hub/cf_resnet18_fmnist_cuttlefish_sr --overwrite --register cf_resnet18_fmnist.cuttlefish_sr --input-domain fashion-mnist \
  --title "cf_resnet18_fmnist.cuttlefish_sr: Cuttlefish ResNet-18 (1/4 width) with plain stable ranks on Fashion-MNIST" \
  --summary "The same network, data, schedule and seed as cf_resnet18_fmnist, with the Cuttlefish switch using the plain stable rank of each layer as its rank (the authors' vanilla-stable-rank option, no xi scaling) and factorizing every layer whose factorization is smaller, without timing it. The switch came after 5 of the 10 epochs and factorized all 19 candidate layers (SVD initialisation, Frobenius decay on the products afterwards), making the network 1.74x smaller." \
  --intended-use "Demonstrating the Cuttlefish switch compressing a network; a small Fashion-MNIST baseline." \
  --limitations "Trained on 20,000 of the 60,000 Fashion-MNIST training images for 10 epochs on a CPU; not a state-of-the-art Fashion-MNIST model. On the CPU it trained on, the factorized 3x3 convolutions of this narrow network are not reliably faster than dense ones (the default recipe's timing kept them dense). Expects 28x28 single-channel images normalised with the Fashion-MNIST mean/std."

$ZOO publish runs/fmnist_resnet18 hub/cf_resnet18_fmnist_full_rank --overwrite --register cf_resnet18_fmnist.full_rank --input-domain fashion-mnist \
  --title "cf_resnet18_fmnist.full_rank: full-rank ResNet-18 (1/4 width) on Fashion-MNIST" \
  --summary "The full-rank twin of cf_resnet18_fmnist: the same architecture, data, schedule and seed, without the Cuttlefish switch. It is the baseline the Cuttlefish and fixed-rank runs are compared with." \
  --intended-use "$FMNIST_USE" --limitations "$FMNIST_LIMITS"

$ZOO publish runs/fmnist_mrl_nano hub/mrl_nano_fmnist --fp16 --overwrite --register mrl_nano_fmnist.fmnist --input-domain fashion-mnist \
  --title "mrl_nano_fmnist: MRL-Nano classifier on Fashion-MNIST" \
  --summary "The zoo's MRL block (regional tokens mixed by self-attention across regions, broadcast back to their regions, then depthwise local mixing; designed from the MRL paper's abstract because the authors' equations and code are not public, see Architecture below) as a 3.2M-parameter four-stage classifier for 28x28 grey images (padded to 32 inside the network, 2x2-pixel regions). Stored in float16; the figures below are measured with the float16-rounded weights." \
  --intended-use "Demonstrating and testing the MRL classifiers (loading, fine-tuning, features_only) on real images with no network access." \
  --limitations "Trained on 20,000 Fashion-MNIST training images for 10 epochs on a CPU, so it is under-trained; ResNet-18 at 1/4 width reaches a higher accuracy on the same budget. Not evidence about MRL's ImageNet or histology performance. Expects 28x28 single-channel images normalised with the Fashion-MNIST mean/std."

$ZOO publish runs/stardist_mrl_seg_nano hub/mrl_seg_nano_stardist --fp16 --overwrite --register mrl_seg_nano.stardist --input-domain fluorescence \
  --title "mrl_seg_nano.stardist: MRL nuclei segmentation net trained on the stardist sample (fluorescence)" \
  --summary "An MRL-Nano encoder with a U-Net trunk and HoVer-Net nuclear-pixel (NP) and horizontal/vertical distance (HV) branches at full resolution, trained from scratch with HoVer-Net's targets, losses (CE+Dice, MSE+MSGE), augmentation and watershed post-processing. The only real annotated nuclei image available offline is the 512x512 fluorescence image shipped in the stardist wheel (2018 Data Science Bowl / BBBC038) - this is NOT H&E histology. It was cut into 16 tiles of 128x128: 10 trained, 2 chose the best epoch, 4 were never used until the figures below. Stored in float16; the figures are measured with the float16-rounded weights. The overlays show the two validation tiles, ground truth left and prediction right." \
  --intended-use "Checking the segmentation pipeline end to end (tiled inference, post-processing, metrics, fine-tuning) and a starting point to fine-tune on your own annotated images with zoo finetune." \
  --limitations "Trained on ten 128x128 tiles of one fluorescence image (about 80 nuclei): it has not seen H&E, other stains, magnifications or scanners, and its figures come from 4 tiles of that same image (about 30 nuclei), so they say little about generalisation. Not for diagnostic use. For H&E, fine-tune on Kumar, CoNSeP or CPM-17 (zoo finetune); the MRL paper's DICE 0.843/0.855/0.892 on those datasets are not reproduced here."

# Compressed after training (zoo compress, training/compress.py): each layer's rank from the stable rank of its
# trained weights, SVD initialisation, distillation from the dense weights; the run directory runs/compress-<folder>
# is resumed, so with a finished run this only re-measures and republishes.
$ZOO compress cf_resnet18_fmnist.full_rank hub/cf_resnet18_fmnist_compressed --data fashion_mnist --ranks scaled \
  --target-macs 2 --no-profile --epochs 6 --register cf_resnet18_fmnist.compressed --overwrite \
  --set optim.lr=0.02 --set log.progress=false --set log.tensorboard=false
$ZOO compress mrl_seg_nano.stardist hub/mrl_seg_nano_stardist_compressed --data stardist --ranks scaled \
  --register mrl_seg_nano.stardist_compressed --overwrite \
  --set optim.lr=1e-4 --set log.progress=false --set log.tensorboard=false

$ZOO cards
