"""A run started before the typed settings (commit ec627cd, when the settings were a dict of strings) resumes
after them as the old code resumed it.

The fixture in tests/data/resume-before-settings/ was written by that commit: a run on the fake CIFAR-10 of
``write_fake_cifar(root, n_per_batch=16)`` with the default recipe of the time (fast80: TrivialAugment, a moving
average, patch dropout) and ``--data-dir ROOT --epochs 2 --warmup-epochs 0.5 --hidden-size 16 --num-hidden-layers 1
--num-attention-heads 2 --intermediate-size 32 --batch-size 16 --train-limit 48 --test-limit 16
--eval-batch-size 16 --threads 1 --no-progress --kernels reference --dtype float64 --hidden-dropout-prob 0.1
--val-split 16``, stopped after epoch 1 (latest.npz, config.json, metrics.jsonl); then resumed by the same
commit with ``--resume DIR --data-dir ROOT`` to the end of epoch 2, whose weights, optimiser moments and
moving average are expected.npz and whose metrics line is expected-epoch-2.json.

On the machine that wrote it the resumed run is equal bit for bit; the test allows 1e-12 of each array's
largest magnitude in float64, the rounding another machine's BLAS may add (on an AVX-512 machine one bias of 48
ended 8.6e-15 from the fixture's, 3.4e-12 of its own small value but 3.5e-14 of its array's largest), far below
what any setting read differently would change.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from tests.cifar_fixtures import REPO, write_fake_cifar

FIXTURE = os.path.join(REPO, "tests", "data", "resume-before-settings")


def test_a_run_saved_before_typed_settings_resumes_as_before(tmp_path):
    data = write_fake_cifar(str(tmp_path / "data"), n_per_batch=16)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("latest.npz", "config.json", "metrics.jsonl"):
        shutil.copy(os.path.join(FIXTURE, name), run / name)
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--resume", str(run),
                        "--data-dir", data], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resuming from" in p.stdout and "epoch 2, step 0" in p.stdout

    with open(run / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    with open(os.path.join(FIXTURE, "expected-epoch-2.json")) as f:
        expected = json.load(f)
    assert [r["epoch"] for r in lines] == [1, 2]
    for key, value in expected.items():
        np.testing.assert_allclose(lines[1][key], value, rtol=1e-12, err_msg=key)

    got, want = np.load(run / "latest.npz"), np.load(os.path.join(FIXTURE, "expected.npz"))
    assert set(want.files) <= set(got.files) and any(k.startswith("ema/") for k in want.files)
    for key in want.files:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12 * np.abs(want[key]).max(),
                                   err_msg=key)
    saved = json.loads(str(np.load(run / "latest.npz")["meta.json"]))["train_config"]
    with open(os.path.join(FIXTURE, "config.json")) as f:
        before = json.load(f)
    where = ("data_dir", "out_dir")               # the resumed run's own folders; every other setting as it was
    assert {k: v for k, v in saved.items() if k not in where and k in before} == \
        {k: v for k, v in before.items() if k not in where}
    from npvit import ViTConfig
    from npvit.training.settings import TRAIN_DEFAULTS
    defaults = {**ViTConfig().to_dict(), **TRAIN_DEFAULTS}                # model keys (patch_overlap) and settings
    added = {k: v for k, v in saved.items() if k not in before}          # settings made since: their defaults
    assert added == {k: defaults[k] for k in added} and set(before) <= set(saved), added
