"""A training run, in parts: ``train(cfg)`` (run.py) sets the run up in reading order and runs its epochs; the
step (step.py), the batch stream (batches.py), the run state and its checkpoints (runstate.py), what the
terminal shows (console.py), and the settings with their recipes (options.py). It takes settings, never
flags: the command line is npvit/cli/train.py, above it.
"""
from .options import build_config
from .run import train

__all__ = ["build_config", "train"]
