#!/usr/bin/env python
"""Export a checkpoint's weights to .safetensors under the article's PyTorch names, for
``safetensors.torch.load_file`` and the article's ``ViTForClassfication.load_state_dict``."""
import sys

from npvit.cli import run_main
from npvit.commands import export_main

if __name__ == "__main__":
    sys.exit(run_main(export_main))
