import json
import math

import pytest

from npvit import ViTConfig

ARTICLE = {"patch_size": 4, "hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
           "intermediate_size": 4 * 48, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
           "initializer_range": 0.02, "image_size": 32, "num_classes": 10, "num_channels": 3, "qkv_bias": True,
           "use_faster_attention": True}


def test_defaults_are_the_articles_model():
    c = ViTConfig()
    assert {k: v for k, v in c.to_dict().items() if k in ARTICLE} == ARTICLE
    assert c.num_tokens == 65


def test_accepts_the_articles_config_dict_and_json(tmp_path):
    assert ViTConfig.from_dict(ARTICLE) == ViTConfig()
    assert ViTConfig.from_dict({**ARTICLE, "use_faster_attention": False}).hidden_size == 48
    path = tmp_path / "c.json"
    path.write_text(json.dumps(ARTICLE))
    assert ViTConfig.from_json(path) == ViTConfig()


@pytest.mark.parametrize("change,error,match", [
    ({"hidden_size": 50}, ValueError, "hidden_size 50 is not divisible by num_attention_heads 4"),
    ({"image_size": 30}, ValueError, "image_size 30 is not divisible by patch_size 4"),
    ({"hidden_dropout_prob": math.nan}, ValueError, "hidden_dropout_prob must be a probability"),
    ({"attention_probs_dropout_prob": 1.0}, ValueError, "attention_probs_dropout_prob"),
    ({"drop_path_rate": 1.0}, ValueError, "drop_path_rate must be a probability"),
    ({"drop_path_rate": "0.1"}, TypeError, "drop_path_rate must be a number"),
    ({"initializer_range": math.nan}, ValueError, "initializer_range"),
    ({"initializer_range": -0.02}, ValueError, "initializer_range"),
    ({"num_hidden_layers": 0}, ValueError, "num_hidden_layers must be positive"),
    ({"patch_size": 4.0}, TypeError, "patch_size must be an int"),
    ({"num_classes": True}, TypeError, "num_classes must be an int"),
    ({"qkv_bias": "yes"}, TypeError, "qkv_bias must be true or false"),
    ({"gelu_approximate": "fast"}, ValueError, "gelu_approximate"),
    ({"patch_overlap": -1}, ValueError, "patch_overlap must be 0 or more pixels, got -1"),
    ({"patch_overlap": 2.0}, TypeError, "patch_overlap must be an int"),
    ({"hidden_szie": 48}, ValueError, r"unknown config keys \['hidden_szie'\]"),
])
def test_bad_config_is_a_clear_error(change, error, match):
    with pytest.raises(error, match=match):
        ViTConfig.from_dict({**ARTICLE, **change})


def test_every_recipe_pins_what_it_trains_with():
    """A recipe names every setting that changes what is trained, so a change of a default (say --init's)
    never changes a recipe's runs behind its back; and each builds into a valid config."""
    from npvit.training.settings import RECIPES, build_config

    training = {"epochs", "batch_size", "lr", "weight_decay", "decay", "warmup_epochs", "schedule", "label_smoothing",
                "augment", "normalize", "mixup", "cutmix", "grad_clip", "ema", "trivial_augment", "trivial_augment_prob",
                "init", "tta_flip"}
    for name, recipe in RECIPES.items():
        assert training <= set(recipe), f"recipe {name} leaves {sorted(training - set(recipe))} to the defaults"
        cfg = build_config(recipe=name)
        flat = cfg.to_dict()
        assert cfg.recipe == name and all(flat[k] == (list(v) if isinstance(v, tuple) else v)
                                          for k, v in recipe.items())
    assert build_config(recipe="sprint").model.pooling == "mean" and build_config(recipe="article").model.pooling == "cls"
    sprint = build_config(recipe="sprint").to_dict()
    full = build_config(recipe="full").to_dict()                                # full: the sprint's model, longer
    assert {k for k in sprint if sprint[k] != full[k]} == {"recipe", "epochs", "ema", "trivial_augment",
                                                           "trivial_augment_prob", "eval_every"}
    fast80, swift80 = build_config(recipe="fast80").to_dict(), build_config(recipe="swift80").to_dict()
    assert {k for k in fast80 if swift80[k] != fast80[k]} == {"recipe", "patch_overlap"}   # the overlap alone
    assert (swift80["epochs"], swift80["patch_overlap"], fast80["patch_overlap"]) == (100, 2, 0)


def test_numba_kernels_without_numba_are_a_config_error(monkeypatch):
    import sys

    import npvit.ops
    from npvit.errors import ConfigError
    from npvit.training.settings import build_config
    monkeypatch.delitem(sys.modules, "npvit.ops.numba_cpu", raising=False)
    monkeypatch.delattr(npvit.ops, "numba_cpu", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)                # as if Numba were not installed
    monkeypatch.setattr(npvit.ops, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"kernels='numba' need Numba, which is not installed \(pip install numba"):
        build_config(overrides={"kernels": "numba"})
    assert build_config(overrides={"kernels": "auto"}).kernels == "auto"     # auto runs fast without it
