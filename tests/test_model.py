import math

import numpy as np
import pytest
import torch

import npvit
from npvit import ViT, ViTConfig, softmax_cross_entropy
from npvit.backend import get_xp, to_device, to_numpy
from npvit.gradcheck import check_model_gradients
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import KERNEL_SETS, assert_close, skip_unless_runs, to_torch, torch_device
from reference.article_vit import ViTForClassfication

ARTICLE = ViTConfig().to_dict()
CONFIGS = {
    "article": ARTICLE,
    "patch8": {**ARTICLE, "patch_size": 8, "hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 40},
    "eps1e-6": {**ARTICLE, "layer_norm_eps": 1e-6},                # another LayerNorm epsilon (timm's)
    "mnist-6heads": {**ARTICLE, "image_size": 28, "patch_size": 7, "num_channels": 1, "hidden_size": 36,
                     "num_attention_heads": 6, "intermediate_size": 72, "num_hidden_layers": 2},
}


def torch_model(config, dtype, backend, faster=True):
    m = ViTForClassfication({**config, "use_faster_attention": faster})
    for module in m.modules():                                  # the article's code has PyTorch's 1e-5 built in
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = config.get("layer_norm_eps", 1e-5)
    return m.to(dtype=getattr(torch, dtype), device=torch_device(backend)).eval()


def test_article_model_has_119k_parameters():
    model = ViT()
    assert model.num_parameters() == 119_098
    assert model.num_parameters() == sum(p.numel() for p in ViTForClassfication(ARTICLE).parameters())
    assert list(model.state_dict()) == list(ViTForClassfication(ARTICLE).state_dict())


@pytest.mark.parametrize("kernels", KERNEL_SETS)
@pytest.mark.parametrize("variant", ["plain", "final_layernorm", "mean_pooling", "erf_gelu", "no_qkv_bias",
                                     "smoothing", "layer_norm_eps", "patch_overlap"])
def test_whole_model_gradcheck(variant, kernels, backend):
    skip_unless_runs(kernels, backend)
    c = ViTConfig.tiny().to_dict()
    smoothing = 0.0
    if variant == "final_layernorm":
        c["final_layernorm"] = True
    elif variant == "mean_pooling":
        c["pooling"] = "mean"
        c["final_layernorm"] = True
    elif variant == "erf_gelu":
        c["gelu_approximate"] = "none"
    elif variant == "no_qkv_bias":
        c["qkv_bias"] = False
    elif variant == "smoothing":
        smoothing = 0.1
    elif variant == "layer_norm_eps":
        c["layer_norm_eps"], c["final_layernorm"] = 0.05, True
    elif variant == "patch_overlap":
        c["patch_overlap"] = 1                                  # 6x6 windows, stride 4, padding 1 on 8x8 images
    model = ViT(c, backend=backend, dtype="float64", seed=3, kernels=kernels)
    xp = model.xp
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((3, 3, 8, 8)), xp)
    labels = to_device(rng.integers(0, 5, 3), xp)
    report = check_model_gradients(model, x, labels, label_smoothing=smoothing)
    assert report.rows[0].name == "x" and len(report.rows) == 1 + len(model.parameters())
    report.assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("kernels", KERNEL_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_article_pytorch_model(name, dtype, kernels, backend):
    """Same weights (through state_dict), same images: logits, loss, dx and every gradient by name."""
    skip_unless_runs(kernels, backend)
    config = CONFIGS[name]
    model = ViT(config, backend=backend, dtype=dtype, seed=1, kernels=kernels)
    ref = torch_model(config, dtype, backend)
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()}, strict=True)
    rng = np.random.default_rng(0)
    B, C, S = 8, config["num_channels"], config["image_size"]
    images, labels = rng.standard_normal((B, C, S, S)), rng.integers(0, 10, B)
    xp = model.xp
    x = to_device(images.astype(dtype), xp)
    logits = model(x)
    loss, dlogits = softmax_cross_entropy(logits, to_device(labels, xp), label_smoothing=0.1)
    model.zero_grad()
    dx = model.backward(dlogits)

    xt = to_torch(images, dtype, backend, requires_grad=True)
    logits_t, _ = ref(xt)
    loss_t = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits_t, torch.tensor(labels, device=xt.device))
    loss_t.backward()
    assert_close(logits, logits_t, dtype, "logits")
    assert_close(loss, loss_t, dtype, "loss")
    assert_close(dx, xt.grad, dtype, "dx")
    grads = model.grad_dict()
    named = dict(ref.named_parameters())
    assert list(grads) == list(named)
    for k, g in grads.items():
        assert g.dtype == np.dtype(dtype), k
        assert_close(g, named[k].grad, dtype, f"grad {k}")


@pytest.mark.parametrize("kernels", KERNEL_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("overlap", [1, 2])
def test_patch_overlap_matches_pytorch(overlap, dtype, kernels, backend):
    """patch_overlap o: the article's model with its patch projection nn.Conv2d(C, D, P + 2o, stride=P,
    padding=o); the same names and shapes of weights, logits, dx and every gradient."""
    skip_unless_runs(kernels, backend)
    config = {**ARTICLE, "patch_overlap": overlap}
    model = ViT(config, backend=backend, dtype=dtype, seed=4, kernels=kernels)
    ref = torch_model(ARTICLE, dtype, backend)
    P = config["patch_size"]
    ref.embedding.patch_embeddings.projection = torch.nn.Conv2d(3, 48, P + 2 * overlap, stride=P, padding=overlap).to(
        dtype=getattr(torch, dtype), device=torch_device(backend))
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()}, strict=True)
    rng = np.random.default_rng(6)
    images, dlogits = rng.standard_normal((5, 3, 32, 32)), rng.standard_normal((5, 10))
    logits = model(to_device(images.astype(dtype), model.xp))
    model.zero_grad()
    dx = model.backward(to_device(dlogits.astype(dtype), model.xp))
    xt = to_torch(images, dtype, backend, requires_grad=True)
    logits_t, _ = ref(xt)
    logits_t.backward(torch.tensor(dlogits, dtype=logits_t.dtype, device=logits_t.device))
    assert_close(logits, logits_t, dtype, "logits")
    assert_close(dx, xt.grad, dtype, "dx")
    named = dict(ref.named_parameters())
    for k, g in model.grad_dict().items():
        assert_close(g, named[k].grad, dtype, f"grad {k}")


@pytest.mark.parametrize("final_layernorm", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mean_pooling_matches_pytorch(dtype, final_layernorm, backend):
    """pooling="mean": the article's modules with the classifier on the mean of the patch tokens (after an
    optional final nn.LayerNorm), as timm's global_pool="avg"; logits, dx and every gradient."""
    config = {**ARTICLE, "pooling": "mean", "final_layernorm": final_layernorm}
    model = ViT(config, backend=backend, dtype=dtype, seed=2)
    article = {k: v for k, v in config.items() if k not in ("pooling", "final_layernorm")}
    ref = torch_model(article, dtype, backend)
    norm = torch.nn.LayerNorm(48).to(dtype=getattr(torch, dtype), device=torch_device(backend))
    sd = model.state_dict()
    if final_layernorm:
        norm.load_state_dict({"weight": torch.tensor(sd.pop("layernorm.weight")),
                              "bias": torch.tensor(sd.pop("layernorm.bias"))})
    ref.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
    rng = np.random.default_rng(5)
    images = rng.standard_normal((6, 3, 32, 32))
    dlogits = rng.standard_normal((6, 10))
    logits = model(to_device(images.astype(dtype), model.xp))
    model.zero_grad()
    dx = model.backward(to_device(dlogits.astype(dtype), model.xp))
    xt = to_torch(images, dtype, backend, requires_grad=True)
    h, _ = ref.encoder(ref.embedding(xt))
    h = norm(h) if final_layernorm else h
    logits_t = ref.classifier(h[:, 1:].mean(dim=1))
    logits_t.backward(torch.tensor(dlogits, dtype=logits_t.dtype, device=logits_t.device))
    assert_close(logits, logits_t, dtype, "logits")
    assert_close(dx, xt.grad, dtype, "dx")
    named = dict(ref.named_parameters())
    if final_layernorm:
        named.update({f"layernorm.{k}": v for k, v in norm.named_parameters()})
    grads = model.grad_dict()
    assert set(grads) == set(named) and grads["embedding.cls_token"].any()      # [CLS] still feeds the patches
    for k, g in grads.items():
        assert_close(g, named[k].grad, dtype, f"grad {k}")


@pytest.mark.parametrize("name", ["article", "mnist-6heads"])
def test_article_checkpoint_loads_both_spellings_and_back(name):
    """A model trained with the article's code (per-head or fused attention) loads here, and ours loads there."""
    config = CONFIGS[name]
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((4, config["num_channels"], config["image_size"],
                                                  config["image_size"]))
    for faster in (False, True):
        ref = torch_model(config, "float64", "numpy", faster)
        model = ViT(config, dtype="float64").load_state_dict(ref.state_dict())
        expected = ref(torch.tensor(x))[0].detach().numpy()
        np.testing.assert_allclose(model(x), expected, rtol=1e-10, atol=1e-12)
    back = torch_model(config, "float64", "numpy", faster=True)
    back.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()}, strict=True)
    np.testing.assert_allclose(back(torch.tensor(x))[0].detach().numpy(), model(x), rtol=1e-10, atol=1e-12)


def test_load_state_dict_names_every_problem():
    model = ViT()
    sd = model.state_dict()
    del sd["classifier.bias"]
    sd["encoder.blocks.9.mlp.dense_1.weight"] = np.zeros(3)
    sd["embedding.cls_token"] = np.zeros((1, 2, 48))
    with pytest.raises(ValueError) as e:
        model.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys ['classifier.bias']" in msg
    assert "unexpected keys ['encoder.blocks.9.mlp.dense_1.weight']" in msg
    assert "embedding.cls_token: expected (1, 1, 48), got (1, 2, 48)" in msg
    per_head = torch_model(ARTICLE, "float32", "numpy", faster=False).state_dict()
    del per_head["encoder.blocks.1.attention.heads.2.key.weight"]
    with pytest.raises(ValueError, match=r"missing \['encoder.blocks.1.attention.heads.2.key.weight'\]"):
        model.load_state_dict(per_head)
    before = model.state_dict()
    with pytest.raises(ValueError):
        model.load_state_dict(sd)
    assert all((model.state_dict()[k] == v).all() for k, v in before.items()), "a failed load changed weights"


def test_return_attention_and_modes():
    model = ViT(ViTConfig.tiny())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    logits, atts = model(x, return_attention=True)
    assert logits.shape == (2, 5) and len(atts) == 2 and atts[0].shape == (2, 3, 5, 5)
    # without maps the last block computes the [CLS] row only: the same logits up to float32 rounding
    np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-7)
    assert model.train() is model and all(layer.training for _, layer in model.named_layers())
    assert model.eval() is model and not any(layer.training for _, layer in model.named_layers())


def test_dropout_is_active_only_in_train_mode():
    model = ViT({**ViTConfig.tiny().to_dict(), "hidden_dropout_prob": 0.3})
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert not np.array_equal(model.train()(x), model(x))
    np.testing.assert_array_equal(model.eval()(x), model(x))


def test_same_seed_same_weights_different_seed_different():
    a, b, c = ViT(seed=5).state_dict(), ViT(seed=5).state_dict(), ViT(seed=6).state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["classifier.weight"] == c["classifier.weight"]).all()


def test_initialisation_follows_the_article():
    sd = ViT(ViTConfig(num_hidden_layers=12), dtype="float64", seed=0).state_dict()
    w = np.concatenate([v.ravel() for k, v in sd.items() if k.endswith("weight") and v.ndim >= 2])
    assert abs(w.std() - 0.02) < 0.0005 and abs(w.mean()) < 0.0005
    assert all((v == 0).all() for k, v in sd.items() if k.endswith("bias"))
    assert all((v == 1).all() for k, v in sd.items() if "layernorm" in k and k.endswith("weight"))
    pos = sd["embedding.position_embeddings"]
    assert pos.shape == (1, 65, 48) and abs(pos.std() - 0.02) < 0.002


@pytest.mark.parametrize("threads", [1, 2])
def test_float32_step_keeps_every_activation_and_gradient_float32(threads):
    model = npvit.parallel.parallelize(ViT(), threads)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits, atts = model(x, return_attention=True)
    loss, dlogits = softmax_cross_entropy(logits, np.array([1, 2]))
    dx = model.backward(dlogits)
    trees = [model] + (model.replicas if threads > 1 else [])   # the shards' caches live in replicas
    def arrays_of(name, value):            # an array, or the array fields of a named cache (npvit/ops/contract.py)
        if isinstance(value, np.ndarray):
            return [(name, value)]
        fields = getattr(value, "_fields", ())
        return [(f"{name}.{f}", getattr(value, f)) for f in fields if isinstance(getattr(value, f), np.ndarray)]

    cached = [pair for tree in trees for n, layer in tree.named_layers() for a, v in vars(layer).items()
              for pair in arrays_of(f"{n}.{a}", v)]
    assert sum(".cache." in name for name, _ in cached) > 20, "no cached activations found"
    arrays = cached + [("logits", logits), ("loss", loss), ("dx", dx)] + list(model.gradients().items()) + \
        list(model.parameters().items()) + [(f"att{i}", a) for i, a in enumerate(atts)]
    wrong = [name for name, a in arrays if a.dtype != np.float32]
    assert not wrong, f"not float32: {wrong}"


# -- bad input --------------------------------------------------------------
@pytest.mark.parametrize("shape,match", [
    ((3, 32, 32), "rank 3"),
    ((2, 1, 32, 32), "1 channels, the model expects num_channels=3"),
    ((2, 3, 28, 28), "28x28, the model expects image_size=32"),
    ((2, 3, 32, 16), "32x16"),
])
def test_bad_input_shape_is_a_clear_value_error(shape, match):
    with pytest.raises(ValueError, match=match):
        ViT()(np.zeros(shape, np.float32))


def test_bad_input_dtype_is_a_clear_type_error():
    model = ViT()
    with pytest.raises(TypeError, match="floating point.*uint8"):
        model(np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(TypeError, match="float64 does not match the model's float32"):
        model(np.zeros((1, 3, 32, 32)))
    with pytest.raises(TypeError, match="numpy array"):
        model([[0.0]])
    with pytest.raises(ValueError, match="dlogits must have the logits' shape"):
        model(np.zeros((2, 3, 32, 32), np.float32))
        model.backward(np.zeros((3, 10), np.float32))


def test_bad_backend_dtype_config_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        ViT(backend="torch")
    with pytest.raises(ValueError, match="unsupported dtype"):
        ViT(dtype="float16")
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        ViT({**ARTICLE, "hidden_dropout_prob": math.nan})
    with pytest.raises(ValueError, match="unknown config keys"):
        ViT({**ARTICLE, "hiden_size": 48})
    with pytest.raises(TypeError, match="ViTConfig or a dict"):
        ViT("article")


@pytest.mark.skipif(npvit.cupy_available(), reason="checks the message shown when CuPy is absent")
def test_cupy_backend_without_cupy_says_so():
    with pytest.raises(ValueError, match="backend='cupy' needs"):
        ViT(backend="cupy")


@pytest.mark.gpu
def test_same_seed_same_weights_on_both_backends():
    a = ViT(backend="numpy", dtype="float64").state_dict()
    b = ViT(backend="cupy", dtype="float64").state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    np.testing.assert_allclose(to_numpy(ViT(backend="cupy", dtype="float64")(to_device(x, get_xp("cupy")))),
                               ViT(dtype="float64")(x), rtol=1e-10)


def test_torch_init_has_pytorchs_default_distributions():
    """init="torch": every parameter distributed as in the article's modules before its _init_weights."""
    model = ViT(ViTConfig(num_hidden_layers=6), dtype="float64", seed=0, init="torch")
    torch.manual_seed(0)
    ref = dict(ViTForClassfication({**ViTConfig(num_hidden_layers=6).to_dict()}).named_parameters())
    ours = model.state_dict()
    assert ours.keys() == ref.keys()
    for k, v in ours.items():
        t = ref[k].detach().numpy()
        if "layernorm" in k:
            np.testing.assert_array_equal(v, t, err_msg=k)                 # 1 and 0
        elif k in ("embedding.cls_token", "embedding.position_embeddings"):
            assert abs(v.std() - 1) < 0.25 and abs(t.std() - 1) < 0.25, k   # torch.randn: N(0, 1)
        else:                                                               # uniform +-1/sqrt(fan_in)
            fan_in = v[0].size if v.ndim > 1 else ref[k.replace("bias", "weight")][0].numel()
            assert np.abs(v).max() <= 1 / np.sqrt(fan_in) and np.abs(t).max() <= 1 / np.sqrt(fan_in), k
            assert abs(v.std() / t.std() - 1) < 0.25, (k, v.std(), t.std())
    assert abs(ours["embedding.position_embeddings"].std() - 1) < 0.05
    again = ViT(ViTConfig(num_hidden_layers=6), dtype="float64", seed=0, init="torch").state_dict()
    assert all((again[k] == v).all() for k, v in ours.items())
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        ViT(init="xavier")
