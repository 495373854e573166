"""How tests/data/v0_1 was written, with gatedvae 0.1.0 (commit 9b6924f), for tests/test_compat.py.

    git worktree add /tmp/old01 9b6924f
    PYTHONPATH=/tmp/old01/src .venv/bin/python tests/data/v0_1/make_fixture.py tests/data/v0_1
    cd tests/data/v0_1 && PYTHONPATH=/tmp/old01/src ../../../.venv/bin/python -m gatedvae sweep run sweep --index 0
    rm -r sweep/runs/*/tensorboard

Only with 0.1 on the path (it checks the version); this version's tests read what it wrote.
"""

import csv
import os
import sys
from pathlib import Path

import numpy as np

import gatedvae
from gatedvae.cli import main
from gatedvae.config import load_config
from gatedvae.train import train

assert gatedvae.__version__ == "0.1.0", gatedvae.__version__
root = Path(sys.argv[1]).resolve()
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
a = np.repeat(np.arange(4), 36)
b = np.tile(np.repeat(np.arange(6), 6), 4)
imgs = np.zeros((144, 8, 8), np.uint8)
for i in range(144):
    imgs[i, :, 2 * a[i] : 2 * a[i] + 2] = 60 + 30 * b[i]
imgs = np.clip(imgs.astype(int) + rng.integers(0, 20, imgs.shape), 0, 255).astype(np.uint8)
np.save(root / "images.npy", imgs)
with open(root / "labels.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["a", "b"])
    w.writerows(zip(a.tolist(), b.tolist(), strict=True))
(root / "config.yaml").write_text("""data:
  name: images
  path: images.npy
  labels: labels.csv
  factor_columns: [a, b]
  image_size: 8
model:
  name: beta_vae
  latent_dim: 4
  hidden: 16
gating:
  enabled: true
  gate_kl: true
  partitions:
    - {name: pa, size: 2, factors: [a]}
    - {name: pb, size: 2, factors: [b]}
train:
  steps: 20
  finetune_steps: 4
  batch_size: 16
  lr: 0.001
  log_every: 4
  checkpoint_every: 8
  keep_checkpoints: 1
  device: cpu
  threads: 1
""")
os.chdir(root)
cfg = load_config("config.yaml")
train(cfg, "run_stopped", quiet=True, tensorboard=False, stop_after=16)
train(cfg, "run_finished", quiet=True, tensorboard=False)
(root / "sweep.yaml").write_text("""name: v01
base: config.yaml
overrides: [train.steps=12, train.finetune_steps=0]
grid:
  model.beta: [1.0, 4.0]
seeds: [0]
evaluate: {metrics: [mig, dci_lasso], preset: fast, seed: 0, figures: false}
""")
assert main(["sweep", "plan", "sweep.yaml", "--out", "sweep"]) == 0
