import numpy as np
import pytest

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


def test_importing_and_running_npvit_needs_no_cupy_and_no_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['cupy'] = None; import numpy as np, npvit; "
            "y = npvit.ViT()(np.zeros((1, 3, 32, 32), np.float32)); "
            "assert y.shape == (1, 10), y.shape; "
            "assert not npvit.cupy_available(); "
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'npvit imported torch'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.gpu
def test_cupy_round_trip():
    cp = get_xp("cupy")
    a = np.arange(6.0)
    d = to_device(a, cp)
    assert get_array_module(d) is cp
    np.testing.assert_array_equal(to_numpy(d), a)
