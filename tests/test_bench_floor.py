"""benchmarks/bench_floor.py: the GEMM FLOPs of a training step, counted from the config."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def floor():
    spec = importlib.util.spec_from_file_location("bench_floor", os.path.join(ROOT, "benchmarks", "bench_floor.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARTICLE = {"hidden_size": 48, "intermediate_size": 192, "num_attention_heads": 4, "num_hidden_layers": 4,
           "patch_size": 4, "num_channels": 3, "image_size": 32}


def step_flop(floor, cfg, images, tokens):
    """The GEMM FLOPs of one training step, summed from bench_floor's list of its products."""
    return sum(2 * r["count"] * r["shape"][0] * r["shape"][1] * r["shape"][2] for r in floor.gemms(cfg, images, tokens))


def test_the_article_models_step_is_53_mflop_of_gemms_per_image(floor):
    def flop(images, tokens):
        return step_flop(floor, ARTICLE, images, tokens)
    # Per image, forward: the patch embedding 64 x 48 x 48, per layer qkv 65 x 48 x 144, output 65 x 48 x 48,
    # MLP 2 x 65 x 48 x 192, scores and context 2 x 4 heads x 65 x 65 x 12; backward twice the forward, but for
    # the patch embedding's dX, which a training step does not compute (the images need no gradient).
    patches = 64 * 48 * 48
    forward = patches + 4 * (65 * 48 * 144 + 65 * 48 * 48 + 2 * 65 * 48 * 192 + 2 * 4 * 65 * 65 * 12)
    assert flop(1, 65) == 3 * 2 * forward - 2 * patches == 53_455_104
    assert flop(128, 65) == 128 * flop(1, 65)
    assert flop(1, 49) < 0.75 * flop(1, 65)        # patch dropout 0.25: 49 tokens, the attention's share quadratic


def test_overlapping_patch_windows_widen_only_the_patch_embedding(floor):
    """swift80's windows reach 2 pixels past each 4x4 patch: the embedding's k is 3 x 8 x 8 = 192, not 48."""
    overlapping = {**ARTICLE, "patch_overlap": 2}
    embedding = [r["shape"] for r in floor.gemms(overlapping, 1, 65) if r["gemm"] == "patch embedding"]
    assert embedding == [(64, 192, 48), (192, 64, 48)]                     # forward, backward dW
    assert step_flop(floor, overlapping, 1, 65) - step_flop(floor, ARTICLE, 1, 65) == 2 * 2 * 64 * (192 - 48) * 48
