"""llm.c's test in npvit's terms: ten training steps of the whole model against the article's PyTorch code.

The same weights, the same batches, AdamW with weight decay on the weight matrices only, label
smoothing and gradient clipping: every step's loss and the final weights agree in float64.
"""
import numpy as np
import pytest
import torch

from npvit import DataParallel, ViT, ViTConfig
from npvit.optim import AdamW, weight_decay_groups
from npvit.training.step import train_step
from reference.article_vit import ViTForClassfication

CONFIG = {**ViTConfig().to_dict(), "hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 40,
          "num_hidden_layers": 2}
STEPS, BATCH = 10, 16


def batches():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((BATCH, 3, 32, 32)), rng.integers(0, 10, BATCH)) for _ in range(STEPS)]


@pytest.mark.parametrize("threads", [1, 2])
def test_ten_adamw_steps_match_the_articles_pytorch_model(threads):
    model = ViT(CONFIG, dtype="float64", seed=0)
    ref = ViTForClassfication(CONFIG).double()
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    net = DataParallel(model, threads) if threads > 1 else model
    opt = AdamW(model, lr=3e-3, weight_decay=0.05, param_groups=weight_decay_groups(model.parameters(), 0.05))
    named = dict(ref.named_parameters())
    topt = torch.optim.AdamW([{"params": [named[k] for k in g["params"]], "weight_decay": g["weight_decay"]}
                              for g in weight_decay_groups(named, 0.05)], lr=3e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    clipped = 0
    for x, y in batches():
        loss, _ = train_step(net, opt, x, y, y, label_smoothing=0.1, grad_clip=0.2)
        topt.zero_grad()
        tloss = loss_fn(ref(torch.tensor(x))[0], torch.tensor(y))
        tloss.backward()
        clipped += float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.2)) > 0.2
        topt.step()
        assert abs(float(loss) - tloss.item()) < 1e-9, (float(loss), tloss.item())
    assert clipped >= 3, "the test should exercise clipping"
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, named[k].detach().numpy(), rtol=0, atol=1e-9, err_msg=k)
