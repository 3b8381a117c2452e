"""The captured training step (npvit/training/capture.py), proven on the CPU: 10 AdamW steps with every random
layer (dropout, attention dropout, drop path, patch dropout), a moving average, a clip, label smoothing and a smaller
last batch equal the eager steps bit for bit, with the graph replaced by a stand-in that replays the step against the
host's state as it was at the capture (``Emulated``) and the dropout masks drawn by their kernels under Numba's CUDA
simulator. A step whose device part read the host's state is caught; a model drawing its masks on the host is
refused; replaced buffers are refused. On a GPU the same step is captured for real (``CudaGraphs``, the gpu mark)."""
import numpy as np
import pytest

from npvit.backend import cupy_available

if not cupy_available():                    # before numba.cuda is first imported: the simulator
    import numba
    numba.config.ENABLE_CUDASIM = True
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed: pip install -e \".[test]\"")

from npvit import ViT  # noqa: E402
from npvit.backend import seed_for  # noqa: E402
from npvit.config import ViTConfig  # noqa: E402
from npvit.ema import EMA  # noqa: E402
from npvit.optim import AdamW, lr_at, Schedule, weight_decay_groups  # noqa: E402
from npvit.training.capture import CapturedStep, CudaGraphs, Emulated  # noqa: E402
from npvit.training.step import StepRule, train_step  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")
RULE = StepRule(label_smoothing=0.1, grad_clip=0.5)
SIZES = [4, 4, 4, 3, 4, 3, 4, 4, 3, 4]          # a smaller batch three times: its shape is captured too


def build(dtype, backend="numpy", kernels="reference"):
    config = ViTConfig.tiny()
    config = type(config).from_dict({**config.to_dict(), "hidden_dropout_prob": 0.1,
                                     "attention_probs_dropout_prob": 0.1, "drop_path_rate": 0.2,
                                     "patch_dropout": 0.25})
    model = ViT(config, backend=backend, dtype=dtype, seed=3, kernels=kernels, init="torch")
    opt = AdamW(model, lr=3e-3, weight_decay=0.05, param_groups=weight_decay_groups(model.parameters(), 0.05))
    return model.draw_on_device(), opt, EMA(model, 0.9)


def batches(dtype, xp=np):
    rng = np.random.default_rng(0)
    for i, B in enumerate(SIZES):
        x = rng.standard_normal((B, 3, 8, 8)).astype(dtype)
        labels = rng.integers(0, 5, B)
        yield i, xp.asarray(x), xp.asarray(labels), xp.asarray(labels)


def run_eager(dtype, xp=np, backend="numpy", kernels="reference"):
    model, opt, ema = build(dtype, backend, kernels)
    schedule, losses = Schedule(3e-3, 2, 0.5, "cosine"), []
    for i, x, target, labels in batches(dtype, xp):
        opt.set_lr(lr_at(schedule, i, 5))
        model.reseed(seed_for(42, 0, i))
        model.start_random_streams()
        loss, _ = train_step(model, opt, x, target, labels, RULE.label_smoothing, RULE.grad_clip)
        ema.update()
        losses.append(float(loss))
    return model, opt, ema, losses


def run_captured(dtype, graphs, xp=np, backend="numpy", kernels="reference", tamper=None):
    model, opt, ema = build(dtype, backend, kernels)
    step = CapturedStep(model, opt, ema, RULE, graphs, warmup=2)
    if tamper:
        tamper(step)
    schedule, losses = Schedule(3e-3, 2, 0.5, "cosine"), []
    for i, x, target, labels in batches(dtype, xp):
        opt.set_lr(lr_at(schedule, i, 5))
        loss, _ = step(x, target, labels, seed_for(42, 0, i))
        losses.append(float(loss))
    return model, opt, ema, losses, step


def assert_same(a, b, xp=np):
    (m1, o1, e1, l1), (m2, o2, e2, l2) = a[:4], b[:4]
    host = (lambda v: v.get()) if xp is not np else np.asarray
    assert l1 == l2
    np.testing.assert_array_equal(host(m1.flat.params), host(m2.flat.params))
    for k in o1.state:
        np.testing.assert_array_equal(host(o1.state[k]), host(o2.state[k]))
    np.testing.assert_array_equal(host(e1.average), host(e2.average))
    assert o1.step_count == o2.step_count == len(SIZES) and e1.updates == e2.updates


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ten_captured_steps_equal_the_eager_steps(dtype):
    eager = run_eager(dtype)
    captured = run_captured(dtype, Emulated(np))
    assert_same(eager, captured)
    step = captured[4]
    rates = tuple(layer.p for layer in step.random_layers)
    assert sorted(set(rates)) == [0.1, 0.2, 0.25]              # dropouts, drop paths, patch dropout
    four, three = ((4, 3, 8, 8), (4,), (4,), rates), ((3, 3, 8, 8), (3,), (3,), rates)
    assert set(step.captured) == {four, three} and step.warm == {four: 2, three: 2}
    assert len(set(eager[3])) == len(SIZES)                 # every step its own loss: new masks each replay


def test_replays_draw_new_masks_and_the_same_key_draws_the_same():
    """Replays of one captured graph with different keys draw different masks (dropout, patch choice); a replay
    with an earlier key draws that step's masks again: the randomness is the key's, not the capture's."""
    model, opt, ema, _, step = run_captured(np.float64, Emulated(np))
    _, x, target, labels = next(batches(np.float64))
    patch = model.patch_dropout
    dropouts = [layer for layer in step.random_layers                 # the hidden dropouts (a drop path's 4 draws
                if type(layer).__name__ == "Dropout" and getattr(layer, "mask", None) is not None]  # may repeat)
    assert len(dropouts) >= 3

    def masks(seed):
        step(x, target, labels, seed)
        return [patch.rows[1].copy()] + [layer.mask.copy() for layer in dropouts]
    first, other, again = masks(7), masks(8), masks(7)
    assert all(not np.array_equal(a, b) for a, b in zip(first, other))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_a_device_part_that_reads_the_hosts_state_is_caught():
    """The whole optimiser step (its host part too) inside the graph: the replays repeat the captured step's count,
    and so its bias corrections, and the result is no longer the eager one."""
    def host_inside(step):
        opt = step.opt
        begin, apply = opt.begin_step, opt.apply_step
        opt.begin_step, opt.apply_step = (lambda: None), (lambda: (begin(), apply()))
    eager = run_eager(np.float64)
    wrong = run_captured(np.float64, Emulated(np), tamper=host_inside)
    assert not np.array_equal(eager[0].flat.params, wrong[0].flat.params)


def test_host_random_numbers_and_replaced_buffers_are_refused():
    model, opt, ema = build(np.float64)
    with pytest.raises(ValueError, match="draw_on_device"):
        CapturedStep(model.draw_on_device(False), opt, ema, RULE, Emulated(np))
    model, opt, ema, _, step = run_captured(np.float64, Emulated(np))
    opt._slots["exp_avg"] = opt.flat.companion()                 # what loading a state dict mid-run would do
    _, x, target, labels = next(batches(np.float64))
    with pytest.raises(RuntimeError, match="were replaced since the capture"):
        step(x, target, labels, 7)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_real_cuda_graph_equals_the_eager_steps(dtype):
    """On the device: the step captured in a CUDA graph (the capturable kernels: no cuBLAS) over 10 steps equals
    the same steps run eagerly, float64 and float32 alike (the same kernels in the same order)."""
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available on this machine")
    import cupy as cp
    eager = run_eager(dtype, cp, "cupy", "capturable")
    captured = run_captured(dtype, CudaGraphs(cp), cp, "cupy", "capturable")
    assert_same(eager, captured, cp)


def test_the_training_loop_replays_the_captured_step(tmp_path, monkeypatch):
    """The run with --cuda-graph's branch of the loop (its CapturedStep on the stand-in graphs, since the option
    itself asks for CuPy) trains as the eager loop does with the same device random streams: the same losses and
    accuracies every epoch, the moving average updated once per step, the last smaller batch included."""
    from npvit.training import run as run_module
    from npvit.training.console import Console
    from npvit.training.settings import build_config
    from tests.cifar_fixtures import write_fake_cifar

    data = str(write_fake_cifar(tmp_path, n_per_batch=10))           # 50 images: batches of 24, 24 and 2
    real_build = run_module.build

    def eager(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.net.draw_on_device()
        return trainer

    def captured(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.captured = CapturedStep(trainer.net.draw_on_device(), trainer.opt, trainer.ema,
                                        trainer.settings.step_rule, Emulated(np), warmup=1)
        return trainer

    runs = {}
    for name, build in (("eager", eager), ("captured", captured)):
        monkeypatch.setattr(run_module, "build", build)
        cfg = build_config(overrides={
            "data_dir": data, "out_dir": str(tmp_path / name), "epochs": 2, "batch_size": 24, "threads": 1,
            "progress": False, "eval_every": 1, "test_limit": 20, "patch_size": 8, "ema": 0.9, "grad_clip": 1.0,
            "hidden_size": 12, "num_attention_heads": 3, "intermediate_size": 20, "num_hidden_layers": 1,
            "hidden_dropout_prob": 0.1, "patch_dropout": 0.25})
        runs[name] = run_module.train(cfg, console=Console(log=lambda *a: None))
    for a, b in zip(runs["eager"], runs["captured"]):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert a[key] == b[key], (key, a, b)
