"""A checkpoint's weights for other libraries (``npvit export``): .safetensors under the article's PyTorch names,
or (``--format hf``) a transformers ViTForImageClassification directory."""
import argparse

from ..checkpoint import export_safetensors
from ..errors import UserError
from ..inference import assumed_note, load_trained
from ..interop import save_hf, save_timm, timm_kwargs
from ..training.settings import model_config_from
from ..runfiles import check_writable
from .runner import add_foreign_args


def main(argv=None, prog=None):
    """Export a checkpoint's weights to .safetensors under the article's PyTorch names, for
``safetensors.torch.load_file`` and the article's ``ViTForClassfication.load_state_dict``; or, with
``--format hf``, to a directory that transformers' ``ViTForImageClassification.from_pretrained`` and
``pipeline("image-classification", model=OUT)`` load (config.json, model.safetensors, preprocessor_config.json);
or, with ``--format timm``, to timm's VisionTransformer names."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py")
    p.add_argument("out", help="the .safetensors file to write (--format hf: a new directory)")
    p.add_argument("--format", choices=["safetensors", "hf", "timm"], default="safetensors",
                   help="safetensors: the article's PyTorch names (default); hf: a transformers ViT directory; "
                        "timm: a .safetensors of timm's VisionTransformer names, its keyword arguments in the "
                        "metadata (timm_kwargs)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="cast the weights (default: as saved)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    config = model_config_from(vars(args), args.config)
    if args.format == "hf":
        model, meta = load_trained(args.checkpoint, config=config)
        note = assumed_note(args.checkpoint, meta)
        if note:
            print(note)
        out = save_hf(model, args.out, meta["classes"], meta["mean"], meta["std"], dtype=args.dtype)
        print(f"wrote {out}/ (config.json, model.safetensors, preprocessor_config.json)")
        return 0
    if not args.out.endswith(".safetensors"):
        raise UserError(f"{args.out}: the output must end in .safetensors")
    check_writable(args.out)
    if args.format == "timm":
        model, meta = load_trained(args.checkpoint, config=config)
        save_timm(model, args.out, dtype=args.dtype, meta=meta)
        print(f"wrote {args.out}: timm's VisionTransformer(**{timm_kwargs(model.config)}) with "
              f"norm_layer=partial(nn.LayerNorm, eps=norm_eps) loads it (npvit.interop.make_timm builds it)")
        return 0
    export_safetensors(args.checkpoint, args.out, dtype=args.dtype, config=config)
    print(f"wrote {args.out}")
    return 0
