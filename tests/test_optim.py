import numpy as np
import pytest
import torch

from npvit import ViT, softmax_cross_entropy
from npvit.config import ViTConfig
from npvit.optim import SGD, AdamW, clip_grad_norm, weight_decay_groups

STEPS = 5


def run_both(make_ours, make_theirs, clip=None):
    """Train the same small ViT for a few steps with npvit and with torch.optim; return both state dicts."""
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=0)
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    opt, topt = make_ours(model), make_theirs(ref)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        model.zero_grad()
        x = rng.standard_normal((4, 3, 8, 8))
        _, d = softmax_cross_entropy(model(x), rng.integers(0, 5, 4))
        model.backward(d)
        # torch sees exactly our gradients: the optimiser update is what is compared
        for k, g in model.gradients().items():
            ref[k].grad = torch.tensor(g)
        if clip:
            norm = clip_grad_norm(model.flat.grads, clip)
            tnorm = torch.nn.utils.clip_grad_norm_(list(ref.values()), clip)
            assert abs(float(norm) - float(tnorm)) < 1e-10 * max(1.0, float(norm))
            assert float(norm) > clip, "the test should clip"
            for k, g in model.gradients().items():     # our clipped gradients against torch's, not replaced
                np.testing.assert_allclose(g, ref[k].grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=k)
        opt.step()
        topt.step()
    return model.state_dict(), {k: v.detach().numpy() for k, v in ref.items()}


def groups_torch(ref, wd):
    return [{"params": [ref[k] for k in g["params"]], "weight_decay": g["weight_decay"]}
            for g in weight_decay_groups(ref, wd)]


@pytest.mark.parametrize("momentum,nesterov,wd,clip", [(0.0, False, 0.0, None), (0.9, False, 1e-2, None),
                                                       (0.9, True, 5e-4, None), (0.9, False, 0.0, 0.05)])
def test_sgd_matches_torch(momentum, nesterov, wd, clip):
    """SGD's step is proportional to the gradient, so it also checks the scale clipping applies."""
    ours, theirs = run_both(lambda m: SGD(m, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd),
                            lambda r: torch.optim.SGD(list(r.values()), lr=0.1, momentum=momentum,
                                                      nesterov=nesterov, weight_decay=wd), clip)
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_adamw_matches_torch(groups, clip):
    def ours(m):
        pg = weight_decay_groups(m.parameters(), 0.05) if groups else None
        return AdamW(m, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05, param_groups=pg)

    def theirs(r):
        params = groups_torch(r, 0.05) if groups else list(r.values())
        return torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05)

    ours_sd, theirs_sd = run_both(ours, theirs, clip)
    for k in ours_sd:
        np.testing.assert_allclose(ours_sd[k], theirs_sd[k], rtol=1e-6, atol=1e-9, err_msg=k)


def test_weight_decay_groups_exempt_biases_norms_and_embeddings():
    decay, no_decay = weight_decay_groups(ViT().parameters(), 0.05)
    assert "encoder.blocks.0.attention.qkv_projection.weight" in decay["params"]
    assert "embedding.patch_embeddings.projection.weight" in decay["params"]
    for k in ["embedding.cls_token", "embedding.position_embeddings", "encoder.blocks.0.layernorm_1.weight",
              "classifier.bias"]:
        assert k in no_decay["params"]
    assert no_decay["weight_decay"] == 0.0


def test_state_dict_round_trip_continues_identically():
    def train(opt_from, steps):
        model = ViT(ViTConfig.tiny(), dtype="float64")
        opt = AdamW(model, lr=1e-2)
        if opt_from is not None:
            model.load_state_dict(opt_from[0])
            opt.load_state_dict(opt_from[1])
        rng = np.random.default_rng(len(steps))
        for seed in steps:
            rng = np.random.default_rng(seed)
            model.zero_grad()
            _, d = softmax_cross_entropy(model(rng.standard_normal((2, 3, 8, 8))), rng.integers(0, 5, 2))
            model.backward(d)
            opt.step()
        return model, opt

    full, _ = train(None, [1, 2, 3, 4])
    half, opt = train(None, [1, 2])
    resumed, _ = train((half.state_dict(), opt.state_dict()), [3, 4])
    for k, v in full.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v)


def test_bad_arguments_are_clear_errors():
    model = ViT(ViTConfig.tiny())
    with pytest.raises(ValueError, match="learning rate"):
        AdamW(model, lr=-1.0)
    with pytest.raises(ValueError, match="finite"):
        AdamW(model, lr=float("nan"))
    with pytest.raises(ValueError, match="betas"):
        AdamW(model, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(model, nesterov=True)
    with pytest.raises(ValueError, match="unknown parameters"):
        SGD(model, param_groups=[{"params": ["nope"]}])
    with pytest.raises(ValueError, match="missing"):
        SGD(model, param_groups=[{"params": ["classifier.bias"]}])
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(model.gradients(), 0.0)
