#!/bin/sh
# glioma_mr 0.2.0: trained from scratch on mr_varied phantoms (issue 16). Rerun to resume
# from the checkpoint after an interruption (same command, same files).
cd "$(dirname "$0")/../.." || exit 1
exec env OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/appliance train --task glioma_mr \
  --out models/bundles --seed 0 --steps 6000 --cases 32 --eval-cases 30 --batch-size 2 \
  --version 0.2.0 --profile mr_varied --thin-slab-probability 0.2 \
  --eval-profile mr_default --eval-seeds 0,1 \
  --validate-every 500 --validate-cases 6 --threads 2 \
  --checkpoint runs/glioma_mr-0.2.0/train.ckpt --log runs/glioma_mr-0.2.0/train.log
