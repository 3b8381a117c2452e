"""Several AdamW steps of a small float64 ViT on fixed batches, on however many processes launched this
(tests/test_mpi.py runs it alone and under mpiexec -n 2); rank 0 saves the final weights to argv[1]."""
import sys

import numpy as np

from npvit import ViT
from npvit.distributed import get_world, shard
from npvit.config import ViTConfig
from npvit.optim import AdamW, weight_decay_groups
from npvit.training.step import train_step

world = get_world()
model = ViT(ViTConfig.tiny(), dtype="float64", seed=0)
opt = AdamW(model, lr=1e-2, weight_decay=0.05, param_groups=weight_decay_groups(model.parameters(), 0.05))
rng = np.random.default_rng(0)
for step in range(5):
    x, y = rng.standard_normal((256, 3, 8, 8)), rng.integers(0, 5, 256)       # the global batch, on every rank
    rows = shard(len(y), world)
    train_step(model, opt, x[rows], y[rows], y[rows], label_smoothing=0.1, grad_clip=0.5, global_batch=len(y),
               reduce_grads=world.allreduce_ if world.size > 1 else None)
if world.rank == 0:
    np.save(sys.argv[1], model.flat.params)
print(f"rank {world.rank} of {world.size} done")
