"""A training run, in parts: ``train(settings)`` (run.py) sets the run up in reading order and runs its
epochs; the step (step.py), the batch stream (batches.py), the run state and its checkpoints (runstate.py),
what the terminal shows (console.py), and the settings with their recipes (settings.py: ``build_config``
makes a ``Settings``). It takes settings, never flags: the command line is npvit/cli/train.py, above it.
"""
from .run import train
from .settings import Settings, build_config

__all__ = ["Settings", "build_config", "train"]
