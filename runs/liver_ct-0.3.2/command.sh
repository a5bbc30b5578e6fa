#!/bin/sh
# liver_ct 0.3.2 (issue 16): 0.3.1's recipe (0.3.0's refiner fine-tuned with the blob loss
# on a ct_fine/ct_varied mix, training phantoms of seed 3) plus the false-blob term
# (weight 1: the mean probability over each predicted tumour component that touches no
# lesion), against 0.3.1's false positives inside the liver parenchyma (docs/training.md).
# Stage 1 stays liver_ct 0.2.0; the evaluation sets stay 0.3.0's.
# Rerun this script to resume from the checkpoint after an interruption.
cd "$(dirname "$0")/../.." || exit 1
# A committed checkpoint is split into parts under 20 MB; join them once before resuming.
if [ ! -f runs/liver_ct-0.3.2/train.ckpt ] && [ -f runs/liver_ct-0.3.2/train.ckpt.part-00 ]; then
  cat runs/liver_ct-0.3.2/train.ckpt.part-* > runs/liver_ct-0.3.2/train.ckpt || exit 1
fi
exec env OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/appliance train --task liver_ct \
  --out models/bundles --seed 3 --steps 3000 --cases 40 --eval-cases 30 --batch-size 2 \
  --version 0.3.2 --refine-from 0.2.0 --init-from 0.3.0 --lr 0.001 \
  --profile ct_fine,ct_varied --blob-loss-weight 1 --false-blob-weight 1 \
  --thin-slab-probability 0.2 --eval-profile ct_fine --eval-seeds 0,1 \
  --validate-every 1000 --validate-cases 6 --threads 2 --checkpoint-every 100 \
  --checkpoint runs/liver_ct-0.3.2/train.ckpt --log runs/liver_ct-0.3.2/train.log
