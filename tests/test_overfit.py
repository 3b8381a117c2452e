"""The whole stack learns: 200 AdamW steps memorise a tiny batch."""
import numpy as np

from npvit import ViT, softmax_cross_entropy
from npvit.optim import AdamW


def test_overfits_a_tiny_batch_in_200_steps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    model = ViT(dict(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                     num_hidden_layers=2), seed=0)
    opt = AdamW(model, lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(200):
        model.zero_grad()
        loss, d = softmax_cross_entropy(model(x), y)
        model.backward(d)
        opt.step()
        first = float(loss) if first is None else first
    acc = float((model(x).argmax(-1) == y).mean())
    assert acc == 1.0, f"training accuracy {acc}"
    assert float(loss) < 0.05 * first
