#!/usr/bin/env python
"""Export a checkpoint's weights to .safetensors under the article's PyTorch names, for
``safetensors.torch.load_file`` and the article's ``ViTForClassfication.load_state_dict``."""
import sys

from npvit.cli import run

if __name__ == "__main__":
    sys.exit(run("export"))
