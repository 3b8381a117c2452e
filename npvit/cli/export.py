"""A checkpoint's weights as .safetensors under the article's PyTorch names (``npvit export``)."""
import argparse

from ..checkpoint import export_safetensors
from ..errors import UserError
from ..training.settings import model_config_from
from ..runfiles import check_writable
from .runner import add_foreign_args


def main(argv=None, prog=None):
    """Export a checkpoint's weights to .safetensors under the article's PyTorch names, for
``safetensors.torch.load_file`` and the article's ``ViTForClassfication.load_state_dict``."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py")
    p.add_argument("out", help="the .safetensors file to write")
    p.add_argument("--dtype", choices=["float32", "float64"], help="cast the weights (default: as saved)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        raise UserError(f"{args.out}: the output must end in .safetensors")
    check_writable(args.out)
    export_safetensors(args.checkpoint, args.out, dtype=args.dtype, config=model_config_from(vars(args), args.config))
    print(f"wrote {args.out}")
    return 0
