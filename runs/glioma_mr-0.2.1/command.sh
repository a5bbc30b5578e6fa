#!/bin/sh
# glioma_mr 0.2.1: 0.2.0 trained on for 2500 more steps (validation was still rising at the
# end of 0.2.0's run), on mr_varied phantoms of another seed, at a quarter of the initial
# learning rate. Finished (not shipped: docs/training.md); its checkpoint is no longer kept.
cd "$(dirname "$0")/../.." || exit 1
exec env OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/appliance train --task glioma_mr \
  --out models/bundles --seed 5 --steps 2500 --cases 32 --eval-cases 30 --batch-size 2 \
  --version 0.2.1 --init-from 0.2.0 --lr 0.0005 --profile mr_varied \
  --thin-slab-probability 0.2 --eval-profile mr_default --eval-seeds 0,1 \
  --validate-every 500 --validate-cases 6 --threads 2 --checkpoint-every 100 \
  --checkpoint runs/glioma_mr-0.2.1/train.ckpt --log runs/glioma_mr-0.2.1/train.log
