import numpy as np
import pytest

import npvit
from npvit.backend import check_dtype, get_array_module, get_xp, to_device, to_numpy


def test_numpy_backend_round_trip():
    xp = get_xp("numpy")
    a = np.arange(6.0)
    assert xp is np and get_array_module(a) is np
    assert to_numpy(to_device(a, xp)) is a


def test_unknown_backend_and_dtype():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        get_xp("jax")
    with pytest.raises(ValueError, match="unsupported dtype"):
        check_dtype("int32")


def test_importing_npvit_needs_no_cupy():
    assert npvit.ViT is not None


@pytest.mark.gpu
def test_cupy_round_trip():
    cp = get_xp("cupy")
    a = np.arange(6.0)
    d = to_device(a, cp)
    assert get_array_module(d) is cp
    np.testing.assert_array_equal(to_numpy(d), a)
