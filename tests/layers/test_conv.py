import numpy as np
import pytest
import torch

from npvit.gradcheck import check_gradients, check_layer_gradients
from npvit.layers import Conv2d, PatchEmbeddings, col2im, im2col
from npvit.ops import numpy_fast
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device, to_numpy

CASES = [  # (C, H, W, kernel, stride, padding)
    (3, 8, 8, 4, 4, 0),     # the patch embedding case: windows tile the image
    (2, 7, 9, 3, 1, 1),     # overlapping windows, padding, non-square
    (3, 9, 9, 3, 2, 1),     # stride 2 with padding
    (1, 6, 5, 2, 3, 0),     # stride larger than kernel: some pixels unused
    (2, 5, 5, 5, 1, 2),     # kernel as large as the image
]


@pytest.mark.parametrize("C,H,W,k,s,p", CASES)
def test_im2col_gradcheck(C, H, W, k, s, p, xp):
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((2, C, H, W)), xp)
    r = to_device(rng.standard_normal(im2col(x, k, k, s, p).shape), xp)
    # L = sum(r * im2col(x))  =>  dL/dx = col2im(r)
    check_gradients(lambda: im2col(x, k, k, s, p), {"x": x}, {"x": col2im(r, x.shape, s, p)},
                    r=r).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("C,H,W,k,s,p", CASES)
def test_im2col_matches_torch_unfold(C, H, W, k, s, p):
    x = np.random.default_rng(0).standard_normal((2, C, H, W))
    cols = im2col(x, k, k, s, p)                                   # (B, OH, OW, C, k, k)
    ref = torch.nn.functional.unfold(torch.tensor(x), k, padding=p, stride=s)  # (B, C*k*k, OH*OW)
    B, OH, OW = cols.shape[:3]
    np.testing.assert_array_equal(cols.reshape(B, OH * OW, -1).transpose(0, 2, 1), ref.numpy())


def test_the_fast_tiling_im2col_is_the_reference_im2col():
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 8))
    np.testing.assert_array_equal(numpy_fast.im2col(x, 4, 4, 4, 0), im2col(x, 4, 4, 4, 0))


@pytest.mark.parametrize("C,H,W,k,s,p", CASES)
def test_conv_gradcheck(C, H, W, k, s, p, xp):
    x = to_device(np.random.default_rng(0).standard_normal((2, C, H, W)), xp)
    conv = Conv2d(C, 4, k, s, p, rng=np.random.default_rng(1), std=0.3).to(xp)
    check_layer_gradients(conv, x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("C,H,W,k,s,p", CASES)
def test_conv_matches_torch(C, H, W, k, s, p, dtype, backend):
    conv = Conv2d(C, 4, k, s, p, rng=np.random.default_rng(1), std=0.3)
    x = np.random.default_rng(0).standard_normal((2, C, H, W))
    compare_with_torch(conv, torch.nn.Conv2d(C, 4, k, s, p), x, dtype, backend)


@pytest.mark.parametrize("image,patch,C", [(8, 4, 3), (28, 7, 1), (12, 2, 2)])
def test_patch_embedding_gradcheck(image, patch, C, xp):
    x = to_device(np.random.default_rng(0).standard_normal((2, C, image, image)), xp)
    pe = PatchEmbeddings(image, patch, C, 6, rng=np.random.default_rng(1), std=0.3).to(xp)
    y = pe.forward(x)
    assert y.shape == (2, (image // patch) ** 2, 6)
    check_layer_gradients(pe, x).assert_ok(GRADCHECK_TOL)


def test_patch_tokens_are_row_major_patches():
    """Token t = patch (t // (W/P), t % (W/P)), as torch's flatten(2).transpose(1, 2)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 12))
    pe = PatchEmbeddings(8, 4, 2, 5, rng=np.random.default_rng(1))
    pe.image_size = None
    y = pe.forward(x)
    w, b = pe.projection.params["weight"], pe.projection.params["bias"]
    for t, (i, j) in enumerate([(i, j) for i in range(2) for j in range(3)]):
        patch = x[0, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
        np.testing.assert_allclose(y[0, t], np.einsum("dchw,chw->d", w, patch) + b, rtol=1e-12)


def test_bad_input_is_a_clear_error():
    conv = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        conv.forward(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        conv.forward(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="does not fit"):
        conv.forward(np.zeros((1, 3, 2, 2)))
    assert to_numpy(im2col(np.zeros((1, 1, 3, 3)), 3, 3)).shape == (1, 1, 1, 1, 3, 3)
