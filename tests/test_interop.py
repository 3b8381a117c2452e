"""Hugging Face transformers' ViT in and out of npvit (npvit/interop.py), against transformers itself: models
made here with random weights (nothing is downloaded), in several configurations; logits and every weight's
gradient equal, a round trip bit-exact, what cannot be expressed refused in one line, and the export read by
transformers' own from_pretrained and image-classification pipeline."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import ViTConfig as HFConfig, ViTForImageClassification  # noqa: E402

from npvit import ViT, softmax_cross_entropy  # noqa: E402
from npvit.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from npvit.errors import CheckpointError  # noqa: E402
from npvit.interop import from_hf, read_hf, save_hf, state_to_hf, to_hf  # noqa: E402
from tests.cifar_fixtures import REPO, write_fake_cifar  # noqa: E402

# (hidden, heads, MLP, layers, image, patch, hidden_act, layer_norm_eps, qkv_bias): a non-square choice of
# heads and widths (5 heads of 4), images other than 32, both GELUs, both epsilons, no qkv bias.
CONFIGS = [(24, 3, 40, 2, 16, 4, "gelu", 1e-12, True), (20, 5, 36, 1, 12, 3, "gelu_new", 1e-6, True),
           (12, 2, 30, 3, 32, 8, "gelu_pytorch_tanh", 1e-5, False)]
IDS = ["D24-H3-exact-erf", "D20-H5-tanh-12px", "D12-H2-no-qkv-bias-32px"]


def made(c, dtype=torch.float64, seed=0):
    """A transformers ViTForImageClassification of configuration ``c`` with random (not initial) weights."""
    D, H, I, L, S, P, act, eps, bias = c
    torch.manual_seed(seed)
    hf = ViTForImageClassification(HFConfig(hidden_size=D, num_attention_heads=H, intermediate_size=I,
                                            num_hidden_layers=L, image_size=S, patch_size=P, hidden_act=act,
                                            layer_norm_eps=eps, qkv_bias=bias, num_labels=7,
                                            id2label={i: f"class {i}" for i in range(7)}))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return hf.to(dtype).eval()


def images(size, n=3, seed=1):
    """n random (normalised) images of size x size pixels."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size))


@pytest.mark.parametrize("c", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logits_equal_transformers(c, dtype, tmp_path):
    hf = made(c, getattr(torch, dtype))
    x = images(c[4]).astype(dtype)
    want = hf(torch.from_numpy(x)).logits.detach().numpy()
    tol = 1e-10 if dtype == "float64" else 2e-5
    vit, meta = from_hf(hf, dtype=dtype)                          # in memory
    np.testing.assert_allclose(vit.eval()(x), want, rtol=0, atol=tol * np.abs(want).max())
    assert meta["classes"] == [f"class {i}" for i in range(7)]
    hf.save_pretrained(tmp_path / "m")                            # and from the directory save_pretrained writes
    model, _, saved = load_checkpoint(tmp_path / "m", dtype=dtype)
    np.testing.assert_allclose(model.eval()(x), want, rtol=0, atol=tol * np.abs(want).max())
    assert saved["classes"] == meta["classes"] and saved["assumed"] == ["mean", "std"]


@pytest.mark.parametrize("c", CONFIGS, ids=IDS)
def test_gradients_of_every_weight_equal_transformers(c):
    hf = made(c)
    x, labels = images(c[4]), np.array([0, 3, 6])
    logits = hf(torch.from_numpy(x)).logits
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
    theirs = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    vit, _ = from_hf(hf, dtype="float64")
    vit.zero_grad()
    _, dlogits = softmax_cross_entropy(vit(x), labels)
    vit.backward(dlogits)
    ours = state_to_hf(vit.grad_dict(), vit.config, spelling=1)     # mapped back through the same conversion
    assert set(ours) == set(theirs)
    for k in theirs:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=0, atol=1e-10 * max(np.abs(theirs[k]).max(), 1e-3),
                                   err_msg=k)


def test_a_round_trip_is_bit_exact(tmp_path):
    hf = made(CONFIGS[1], torch.float32)
    hf.save_pretrained(tmp_path / "theirs")
    vit, _, meta = load_checkpoint(tmp_path / "theirs")
    save_hf(vit, tmp_path / "back", meta["classes"], meta["mean"], meta["std"])
    from safetensors.numpy import load_file
    a, b = load_file(tmp_path / "theirs" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    again = ViTForImageClassification.from_pretrained(tmp_path / "back").eval()
    x = torch.from_numpy(images(CONFIGS[1][4]).astype(np.float32))
    assert torch.equal(again(x).logits, hf(x).logits)
    assert again.config.id2label == hf.config.id2label
    back = to_hf(vit, meta["classes"])                               # and in memory
    assert torch.equal(back(x).logits, hf(x).logits)


def test_what_transformers_cannot_hold_is_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"pools the mean of the patch tokens .* classifies the \[CLS\] token"):
        save_hf(ViT(dict(final_layernorm=True, pooling="mean")), tmp_path / "a", [str(i) for i in range(10)],
                [0.5] * 3, [0.5] * 3)
    with pytest.raises(CheckpointError, match="no final LayerNorm .* always ends with one"):
        save_hf(ViT(), tmp_path / "b", [str(i) for i in range(10)], [0.5] * 3, [0.5] * 3)
    with pytest.raises(CheckpointError,
                       match="patch windows overlap .* transformers' ViT cuts the image into tiles.*--patch-overlap 0"):
        save_hf(ViT(dict(final_layernorm=True, patch_overlap=1)), tmp_path / "c", [str(i) for i in range(10)],
                [0.5] * 3, [0.5] * 3)
    assert not os.listdir(tmp_path)                                  # nothing written
    hf = made(CONFIGS[0])
    hf.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="already exists and is not an empty directory"):
        save_hf(from_hf(hf)[0], tmp_path / "m", [str(i) for i in range(7)], [0.5] * 3, [0.5] * 3)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for change, message in ((dict(hidden_act="relu"), "hidden_act 'relu'"),
                            (dict(image_size=[16, 24]), r"image_size \[16, 24\] is not square"),
                            (dict(model_type="deit"), "model_type 'deit'"),
                            (dict(architectures=["ViTModel"]), "a transformers ViTModel")):
        (tmp_path / "m" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            read_hf(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    from safetensors.numpy import load_file, save_file
    state = load_file(tmp_path / "m" / "model.safetensors")
    save_file({**state, "vit.pooler.dense.weight": np.zeros((24, 24), np.float32)}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match="arrays npvit's ViT has no place for: vit.pooler.dense.weight"):
        read_checkpoint(tmp_path / "m")
    os.remove(tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no model.safetensors .* never pickled .bin files"):
        read_checkpoint(tmp_path / "m")
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint"):
        read_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    """A short npvit run of a model transformers can hold: a final LayerNorm and the [CLS] token."""
    root = tmp_path_factory.mktemp("hf")
    data = write_fake_cifar(str(root / "data"), n_per_batch=16)
    out = str(root / "run")
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", data, "--out-dir", out,
                        "--epochs", "1", "--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size",
                        "48", "--num-hidden-layers", "2", "--pooling", "cls", "--patch-overlap", "0",
                        "--final-layernorm", "--no-progress", "--threads", "1", "--normalize", "dataset"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    return root, data, out


def test_npvit_export_hf_is_read_by_from_pretrained_and_the_pipeline(cls_run):
    root, data, out = cls_run
    exported = str(root / "exported")
    p = subprocess.run([sys.executable, "-m", "npvit", "export", os.path.join(out, "latest.npz"), exported,
                        "--format", "hf"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and "wrote" in p.stdout, p.stdout + p.stderr
    assert sorted(os.listdir(exported)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    model, _, meta = load_checkpoint(os.path.join(out, "latest.npz"), averaged=True)
    processor = json.loads(open(os.path.join(exported, "preprocessor_config.json")).read())
    np.testing.assert_allclose(processor["image_mean"], meta["mean"])       # the run's own normalisation
    np.testing.assert_allclose(processor["image_std"], meta["std"])

    from npvit.data import load_dataset
    from npvit.inference import predict_proba
    test = load_dataset("cifar10", data).x_test[:8]
    ours = predict_proba(model.eval(), test, meta["mean"], meta["std"])
    hf = ViTForImageClassification.from_pretrained(exported).eval()
    x = (test / 255.0 - np.array(meta["mean"])[:, None, None]) / np.array(meta["std"])[:, None, None]
    theirs = torch.softmax(hf(torch.from_numpy(x.astype(np.float32))).logits, -1).detach().numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert hf.config.id2label[0] == "airplane"

    from PIL import Image
    classify = transformers.pipeline("image-classification", model=exported)
    for image, p_ours in zip(test[:4], ours):
        top = classify(Image.fromarray(image.transpose(1, 2, 0)), top_k=1)[0]
        assert top["label"] == meta["classes"][int(p_ours.argmax())]
        assert abs(top["score"] - float(p_ours.max())) < 1e-4


def test_the_shipped_cls_weights_classify_in_the_pipeline_as_npvit_evaluate_does(real_data, tmp_path):
    """The [CLS]-pooled weights that ship with npvit, exported with --format hf: transformers' own pipeline gives
    every one of the first 1,000 real test images the class npvit gives it, so the same accuracy."""
    from PIL import Image

    from npvit.checkpoint import SHIPPED_CLS
    from npvit.data import load_dataset
    from npvit.inference import load_trained, predict_proba
    exported = str(tmp_path / "hf")
    p = subprocess.run([sys.executable, "-m", "npvit", "export", SHIPPED_CLS, exported, "--format", "hf"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    test = load_dataset("cifar10", real_data, splits=("test",))
    x, y = test.x_test[:1000], test.y_test[:1000]
    model, meta = load_trained(SHIPPED_CLS)
    ours = predict_proba(model.eval(), x, meta["mean"], meta["std"]).argmax(1)
    classify = transformers.pipeline("image-classification", model=exported)
    theirs = [r[0]["label"] for r in classify([Image.fromarray(i.transpose(1, 2, 0)) for i in x], top_k=1,
                                              batch_size=100)]
    assert theirs == [meta["classes"][k] for k in ours]
    accuracy = float(np.mean(ours == y))
    assert 0.74 < accuracy < 0.84, accuracy        # (78.55% on all 10,000, docs/interop.md)


def test_every_program_takes_a_transformers_directory(cls_run, tmp_path):
    root, data, out = cls_run
    exported = str(root / "exported-2")
    subprocess.run([sys.executable, "-m", "npvit", "export", os.path.join(out, "latest.npz"), exported, "--format",
                    "hf"], check=True, capture_output=True, cwd=REPO)
    run = lambda *a: subprocess.run([sys.executable, "-m", "npvit", *a], capture_output=True, text=True, cwd=REPO)
    p = run("evaluate", exported, "--data-dir", data)
    assert p.returncode == 0 and "accuracy" in p.stdout.lower(), p.stdout + p.stderr
    p = run("evaluate", os.path.join(out, "latest.npz"), "--data-dir", data)
    assert p.returncode == 0
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", data, "--out-dir",
                        str(tmp_path / "ft"), "--epochs", "1", "--init-from", exported, "--hidden-size", "24",
                        "--num-attention-heads", "3", "--intermediate-size", "48", "--num-hidden-layers", "2",
                        "--pooling", "cls", "--patch-overlap", "0", "--final-layernorm", "--layer-norm-eps", "1e-5",
                        "--no-progress", "--threads", "1"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


# -- timm ------------------------------------------------------------------------------------------------------
# (depth, width, heads, MLP, image, patch, global_pool, final_norm, act, eps, qkv_bias): timm's defaults (token,
# final norm, exact GELU, 1e-6), the mean of the patch tokens, the article's model (no final norm, tanh, 1e-5).
TIMM_CONFIGS = [(2, 24, 3, 40, 16, 4, "token", True, "gelu", 1e-6, True),
                (1, 20, 5, 36, 12, 3, "avg", True, "gelu_tanh", 1e-6, False),
                (2, 12, 4, 48, 32, 4, "token", False, "gelu_tanh", 1e-5, True)]
TIMM_IDS = ["token-exact", "avg-tanh-5-heads", "article"]


def made_timm(c, dtype=torch.float64, seed=0, **extra):
    import functools

    timm = pytest.importorskip("timm")
    L, D, H, I, S, P, pool, final, act, eps, bias = c
    torch.manual_seed(seed)
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=S, patch_size=P, embed_dim=D, depth=L, num_heads=H, mlp_ratio=I / D, num_classes=7, global_pool=pool,
        final_norm=final, fc_norm=False, act_layer=act, qkv_bias=bias,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=eps), **extra)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.to(dtype).eval()


@pytest.mark.parametrize("c", TIMM_CONFIGS, ids=TIMM_IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_timm_logits_and_gradients_equal_timm(c, dtype):
    from npvit.interop import from_timm, state_to_timm
    m = made_timm(c, getattr(torch, dtype))
    x, labels = images(c[4]).astype(dtype), np.array([0, 3, 6])
    logits = m(torch.from_numpy(x))
    vit = from_timm(m, dtype=dtype)
    want = logits.detach().numpy()
    tol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(vit.eval()(x), want, rtol=0, atol=tol * np.abs(want).max())
    if dtype == "float64":
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
        vit.zero_grad()
        vit.backward(softmax_cross_entropy(vit(x), labels)[1])
        ours = state_to_timm(vit.grad_dict(), vit.config)
        for k, p in m.named_parameters():
            np.testing.assert_allclose(ours[k], p.grad.numpy(), rtol=0,
                                       atol=1e-10 * max(np.abs(p.grad.numpy()).max(), 1e-3), err_msg=k)


def test_timm_round_trip_and_export(tmp_path):
    from safetensors.numpy import load_file, save_file

    from npvit.interop import from_timm, make_timm, timm_kwargs, to_timm
    m = made_timm(TIMM_CONFIGS[1], torch.float32)
    vit = from_timm(m)
    back = to_timm(vit)                                              # theirs -> npvit -> theirs, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))
    x = torch.from_numpy(images(12).astype(np.float32))
    assert torch.equal(back(x), m(x))
    # a timm state dict saved as .safetensors loads with the model flags, as a PyTorch state dict does
    save_file({k: v.numpy() for k, v in m.state_dict().items()}, tmp_path / "timm.safetensors")
    model, _, _ = load_checkpoint(tmp_path / "timm.safetensors", config=vit.config)
    np.testing.assert_array_equal(model.eval()(x.numpy()), vit.eval()(x.numpy()))
    # npvit export --format timm: the keyword arguments ride in the metadata, and timm takes the weights
    npz = tmp_path / "model.npz"
    from npvit.checkpoint import save_checkpoint
    save_checkpoint(npz, vit, meta={"classes": [str(i) for i in range(7)], "mean": [0.5] * 3, "std": [0.5] * 3})
    p = subprocess.run([sys.executable, "-m", "npvit", "export", str(npz), str(tmp_path / "out.safetensors"),
                        "--format", "timm"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and "timm's VisionTransformer" in p.stdout, p.stdout + p.stderr
    from safetensors import safe_open
    with safe_open(tmp_path / "out.safetensors", framework="numpy") as f:
        kwargs = json.loads(f.metadata()["timm_kwargs"])
    assert kwargs == timm_kwargs(vit.config)
    again = make_timm(kwargs)
    again.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(tmp_path / "out.safetensors").items()})
    assert torch.equal(again.eval()(x), m(x))
    model, _, meta = load_checkpoint(tmp_path / "out.safetensors")   # and npvit reads its own export back,
    assert model.config == vit.config                                  # with the run's classes and normalisation
    assert meta["classes"] == [str(i) for i in range(7)] and meta["mean"] == [0.5] * 3


@pytest.mark.parametrize("extra, message", [(dict(reg_tokens=4), "4 register tokens"),
                                            (dict(init_values=1e-5), "layer scale"),
                                            (dict(qk_norm=True), "query/key norms"),
                                            (dict(no_embed_class=True), "positions for the patches only")])
def test_what_npvit_cannot_express_of_timm_is_one_line(extra, message):
    from npvit.interop import timm_kwargs
    with pytest.raises(CheckpointError,
                       match="patch windows overlap .* timm's VisionTransformer cuts the image.*--format safetensors"):
        timm_kwargs(ViT(dict(patch_overlap=2)).config)
    from npvit.interop import from_timm
    with pytest.raises(CheckpointError, match=message):
        from_timm(made_timm(TIMM_CONFIGS[0], **extra))
    timm = pytest.importorskip("timm")
    avg_fc_norm = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, embed_dim=12, depth=1,
                                                                   num_heads=3, num_classes=5, global_pool="avg")
    with pytest.raises(CheckpointError, match=r"a norm after pooling \(fc_norm\)"):
        from_timm(avg_fc_norm)
