#!/bin/sh
# liver_ct 0.3.0: the two-stage liver model (issue 16). Stage 1 = liver_ct 0.2.0 (unchanged);
# stage 2, the refiner (DynUNet 8-16-32-64-128, stride-1 first level, 1 x 1 x 1.5 mm grid,
# 64 x 64 x 48 patches), trained from scratch on ct_varied phantoms cut to their liver box.
# Rerun this script to resume from the checkpoint after an interruption. Shipped on
# 2026-12-06 (models/bundles/liver_ct/0.3.0); its checkpoint was then deleted.
cd "$(dirname "$0")/../.." || exit 1
# The committed checkpoint is split into parts under 20 MB; join them once before resuming.
if [ ! -f runs/liver_ct-0.3.0/train.ckpt ] && [ -f runs/liver_ct-0.3.0/train.ckpt.part-00 ]; then
  cat runs/liver_ct-0.3.0/train.ckpt.part-* > runs/liver_ct-0.3.0/train.ckpt || exit 1
fi
exec env OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/appliance train --task liver_ct \
  --out models/bundles --seed 0 --steps 6000 --cases 40 --eval-cases 30 --batch-size 2 \
  --version 0.3.0 --refine-from 0.2.0 --profile ct_varied --thin-slab-probability 0.2 \
  --eval-profile ct_fine --eval-seeds 0,1 \
  --validate-every 2000 --validate-cases 6 --threads 2 --checkpoint-every 100 \
  --checkpoint runs/liver_ct-0.3.0/train.ckpt --log runs/liver_ct-0.3.0/train.log
