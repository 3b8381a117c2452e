#!/usr/bin/env python
"""Export a checkpoint's weights to .safetensors under the article's PyTorch names, for
``safetensors.torch.load_file`` and the article's ``ViTForClassfication.load_state_dict``."""
import argparse
import sys

from npvit.checkpoint import export_safetensors
from npvit.cli import run_main
from npvit.errors import UserError
from npvit.runfiles import check_writable


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py")
    p.add_argument("out", help="the .safetensors file to write")
    p.add_argument("--dtype", choices=["float32", "float64"], help="cast the weights (default: as saved)")
    args = p.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        raise UserError(f"{args.out}: the output must end in .safetensors")
    check_writable(args.out)
    export_safetensors(args.checkpoint, args.out, dtype=args.dtype)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
