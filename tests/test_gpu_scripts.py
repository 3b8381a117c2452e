"""The GPU scripts of benchmarks/ (run where a GPU is): each parses, and gpu_check.sh refuses a mistake in one line,
exit status 2, before it runs or writes anything."""
import glob
import os
import subprocess

import pytest

from tests.cifar_fixtures import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "benchmarks", "gpu_*.sh")))


def bash(*args, cwd=REPO):
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_every_gpu_script_parses(path):
    p = bash("-n", path)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args,message", [
    ((), "usage: bash benchmarks/gpu_check.sh DATA OUT [SECONDS] [PARTS]"),
    (("DATA", "OUT", "ten"), "SECONDS must be a whole number of seconds, got 'ten'"),
    (("DATA", "OUT", "60", "suite tests"), "unknown part 'tests' (suite, bench, speedrun)"),
    (("{tmp}/nothing", "{tmp}/out", "60"), "is neither a folder holding cifar-10-batches-py/ nor an archive"),
])
def test_gpu_check_refuses_mistakes_in_one_line(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    p = bash(os.path.join(REPO, "benchmarks", "gpu_check.sh"), *args, cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert os.listdir(tmp_path) == []                              # no OUT made, nothing written


def test_gpu_check_without_a_gpu_says_so_and_writes_nothing(tmp_path):
    from npvit.backend import cupy_available
    from tests.cifar_fixtures import write_fake_cifar
    if cupy_available():
        pytest.skip("this machine has a GPU: gpu_check.sh would run")
    data = write_fake_cifar(tmp_path / "data", n_per_batch=4)
    p = bash(os.path.join(REPO, "benchmarks", "gpu_check.sh"), str(data), str(tmp_path / "out"), "60")
    assert p.returncode == 2 and "CuPy sees no CUDA GPU here" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()
