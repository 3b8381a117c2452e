"""DataParallel(model, threads=T): the batch as T shards on T threads (npvit/parallel.py) gives the one-thread
results; the model knows nothing of it."""
import copy
import sys
import threading
import warnings

import numpy as np
import pytest
import torch

from npvit import DataParallel, ViT, softmax_cross_entropy
from npvit.gradcheck import check_model_gradients
from npvit.config import ViTConfig
from npvit.cli.runner import threads_arg
from npvit.parallel import check_threads, parallelize
from npvit.training.step import train_step
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import assert_close, rel_err
from reference.article_vit import ViTForClassfication

SMALL = ViTConfig.tiny().to_dict()     # 8x8 images, patch 4, 5 tokens, 5 classes


def step(model, x, labels):
    logits, atts = model(x, return_attention=True)
    _, dlogits = softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    dx = model.backward(dlogits)
    return logits, atts, dx, model.grad_dict()


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("threads,batch", [(2, 8), (3, 7), (4, 2), (2, 1)])
def test_shards_give_the_one_thread_results(threads, batch, dtype, tol):
    """Logits, attention maps, dx and every gradient; batches that do not divide, or smaller than T."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 8, 8)).astype(dtype)
    labels = rng.integers(0, 5, batch)
    one, many = ViT(SMALL, dtype=dtype, seed=2), DataParallel(ViT(SMALL, dtype=dtype, seed=2), threads)
    for _ in range(2):   # twice without zero_grad: the shards' gradients accumulate like the model's
        ref, got = step(one, x, labels), step(many, x, labels)
    logits, atts, dx, grads = ref
    logits2, atts2, dx2, grads2 = got
    assert rel_err(logits2, logits) < tol and rel_err(dx2, dx) < tol
    assert len(atts2) == len(atts) and all(rel_err(a2, a) < tol for a, a2 in zip(atts, atts2))
    assert list(grads2) == list(grads)
    for k in grads:
        assert grads2[k].dtype == np.dtype(dtype) and rel_err(grads2[k], grads[k]) < tol, k


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sharded_article_model_matches_pytorch(dtype):
    model = DataParallel(ViT(dtype=dtype, seed=1), 3)
    ref = ViTForClassfication(model.config.to_dict()).to(getattr(torch, dtype)).eval()
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((8, 3, 32, 32)).astype(dtype), rng.integers(0, 10, 8)
    logits = model(images)
    _, dlogits = softmax_cross_entropy(logits, labels)
    dx = model.backward(dlogits)
    xt = torch.tensor(images, requires_grad=True)
    logits_t = ref(xt)[0]
    torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels)).backward()
    assert_close(logits, logits_t, dtype, "logits")
    assert_close(dx, xt.grad, dtype, "dx")
    named = dict(ref.named_parameters())
    for k, g in model.grad_dict().items():
        assert_close(g, named[k].grad, dtype, f"grad {k}")


def test_sharded_model_passes_the_gradient_check():
    model = DataParallel(ViT(SMALL, dtype="float64", seed=3), 2)
    rng = np.random.default_rng(0)
    check_model_gradients(model, rng.standard_normal((3, 3, 8, 8)), rng.integers(0, 5, 3)).assert_ok(GRADCHECK_TOL)


def test_shards_run_on_their_own_threads_with_blas_on_one():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    model = DataParallel(ViT(SMALL), 3)
    x = np.zeros((6, 3, 8, 8), np.float32)
    model(x)
    seen = {}
    for t, replica in enumerate(model.replicas):
        inner = replica.classifier.forward

        def spy(h, _inner=inner, _t=t):
            seen[_t] = (threading.current_thread().name, blas_threads())
            return _inner(h)

        replica.classifier.forward = spy
    before = blas_threads()
    model(x)
    main = threading.current_thread().name       # shard 0 runs on the caller, the others on npvit's workers
    assert sorted(seen) == [0, 1, 2] and seen[0][0] == main, seen
    assert all(seen[t][0].startswith("npvit") for t in (1, 2)), seen
    assert all(n == [1] * len(before) for _, n in seen.values()), f"BLAS threads inside the shards: {seen}"
    assert blas_threads() == before, "BLAS threads were not restored after the step"


def test_one_thread_training_holds_blas_to_one_thread(tmp_path):
    """--threads 1 means one core: BLAS holds no spinning pool of its own during the steps (two such
    processes on two cores each ran at a quarter speed), and has its threads back afterwards."""
    from threadpoolctl import threadpool_info

    from npvit.training.console import Console
    from npvit.training.settings import build_config
    from npvit.training.run import train
    from tests.cifar_fixtures import write_fake_cifar

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    if max(before, default=1) < 2:
        pytest.skip("BLAS runs one thread here already (one core, or OPENBLAS_NUM_THREADS=1): nothing to hold")
    seen = []
    cfg = build_config(overrides={"data_dir": str(write_fake_cifar(tmp_path, n_per_batch=16)), "epochs": 1,
                                  "batch_size": 32, "out_dir": str(tmp_path / "run"), "threads": 1,
                                  "progress": False, **SMALL_TRAIN})
    train(cfg, console=Console(log=lambda *a: None), callbacks=[lambda trainer, epoch, step: seen.append(blas_threads())])
    assert seen and all(n == [1] * len(before) for n in seen), seen
    assert blas_threads() == before


SMALL_TRAIN = {"hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 48, "num_hidden_layers": 1}


def test_dropout_masks_differ_between_shards_and_repeat_with_the_seed():
    c = {**SMALL, "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.5}
    x = np.repeat(np.random.default_rng(0).standard_normal((1, 3, 8, 8)), 2, axis=0)   # the same image twice
    a, b = DataParallel(ViT(c, dtype="float64"), 2), DataParallel(ViT(c, dtype="float64"), 2)
    ya, yb = a(x), b(x)
    assert not np.allclose(ya[0], ya[1]), "both shards drew the same dropout mask"
    np.testing.assert_array_equal(ya, yb)
    a.eval()                                 # eval mode reaches the replicas: no dropout, rows agree
    np.testing.assert_allclose(a(x), ViT(c, dtype="float64").eval()(x), rtol=1e-12)
    assert all(not layer.training for r in a.replicas for _, layer in r.named_layers())


def test_the_wrapper_follows_load_and_deepcopy_and_refuses_astype():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8))
    one, many = ViT(SMALL, seed=1, dtype="float64"), DataParallel(ViT(SMALL, seed=5, dtype="float64"), 2)
    many.load_state_dict(one.state_dict())                           # in place: the replicas see it too
    ref = step(one, x, np.arange(4))
    got = step(many, x, np.arange(4))
    assert rel_err(got[0], ref[0]) < 1e-12
    assert all(g.dtype == np.float64 and rel_err(g, ref[3][k]) < 1e-12 for k, g in got[3].items())
    twin = copy.deepcopy(many)
    assert twin.model is not many.model and all(r.flat.params is twin.model.flat.params for r in twin.replicas)
    twin.zero_grad()
    assert rel_err(step(twin, x, np.arange(4))[3]["classifier.weight"], ref[3]["classifier.weight"]) < 1e-12
    with pytest.raises(RuntimeError, match="cast the model before wrapping it"):
        many.astype("float32")


def test_the_model_knows_nothing_of_threads():
    model = ViT(SMALL)
    assert not any("parallel" in name or "thread" in name for name in vars(model))
    net = parallelize(model, 2)
    assert isinstance(net, DataParallel) and net.model is model and parallelize(model, 1) is model


def test_train_step_with_threads_is_the_same_step():
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((10, 3, 8, 8)), rng.integers(0, 5, 10)
    from npvit.optim import SGD

    weights = []
    for threads, micro in ((1, None), (2, None), (3, 4)):
        model = DataParallel(ViT(SMALL, dtype="float64", seed=1), threads)
        opt = SGD(model, lr=0.5, momentum=0.9)
        train_step(model, opt, x, labels, labels, label_smoothing=0.1, micro_batch=micro)
        weights.append(model.state_dict())
    for w in weights[1:]:
        for k in w:
            np.testing.assert_allclose(w[k], weights[0][k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "two", True, None])
def test_bad_threads_are_clear_errors(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        DataParallel(ViT(SMALL), bad)
    if bad != "two":
        with pytest.raises(ValueError, match="threads must be a positive integer or 'auto'"):
            parallelize(ViT(SMALL), bad)


def test_threads_auto_cupy_and_missing_threadpoolctl(monkeypatch):
    assert check_threads("auto", "numpy") >= 1 and check_threads("auto", "cupy") == 1
    auto = parallelize(ViT(SMALL), "auto")
    assert getattr(auto, "threads", 1) == check_threads("auto", "numpy")
    with pytest.raises(ValueError, match="numpy backend only, not 'cupy'"):
        check_threads(2, "cupy")
    assert threads_arg("auto") == "auto" and threads_arg("3") == 3
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    with pytest.raises(ImportError, match="pip install threadpoolctl"):
        DataParallel(ViT(SMALL), 2)
    assert parallelize(ViT(SMALL), 1).__class__ is ViT                 # one thread needs nothing extra


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        DataParallel(ViT(SMALL), 2).backward(np.zeros((2, 5), np.float32))


def test_a_shards_error_reaches_the_caller_after_every_shard_stopped():
    import time

    model = DataParallel(ViT(SMALL), 2)
    x = np.zeros((4, 3, 8, 8), np.float32)
    model(x)
    r0, r1 = model.replicas
    finished = []

    def slow(h, _inner=r1.classifier.forward):
        time.sleep(0.2)
        finished.append(True)
        return _inner(h)

    def boom(h):
        raise ValueError("boom in shard 0")

    r0.classifier.forward, r1.classifier.forward = boom, slow
    with pytest.raises(ValueError, match="boom in shard 0"):
        model(x)
    assert finished == [True], "shard 1 was still running when the error came back"
    del r0.classifier.forward                          # back to the class's method
    r1.classifier.forward = boom
    with pytest.raises(ValueError, match="boom in shard 0"):    # an error on the worker thread reaches us too
        model(x)


def test_shards_follow_the_callers_floating_point_error_handling():
    """np.errstate is per thread: the shards must see the caller's, or a diverging run prints
    warnings (or fails to raise) from the worker threads alone."""
    model = DataParallel(ViT(ViTConfig.tiny(), dtype="float32", seed=0), 2)
    x = np.full((4, 3, 8, 8), 3e38, dtype=np.float32)          # overflows inside every shard
    with np.errstate(over="raise", invalid="raise"):
        with pytest.raises(FloatingPointError):
            model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            model(x)                                           # silent on every thread


@pytest.mark.parametrize("threads", [1, 2])
def test_without_the_input_gradient_the_parameter_gradients_are_the_same(threads):
    """backward(dlogits, input_grad=False), as a training step calls it: no dx (None), no col2im and one GEMM fewer,
    and every parameter gradient bit for bit the one backward with dx gives."""
    from tests.ops.test_contract import counting_set

    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((6, 3, 8, 8)), rng.integers(0, 5, 6)
    ops, counts = counting_set()
    grads = []
    for input_grad in (True, False):
        model = parallelize(ViT(SMALL, kernels=ops, dtype="float64", seed=3), threads)
        _, dlogits = softmax_cross_entropy(model(x), labels)
        counts.clear()
        dx = model.backward(dlogits, input_grad=input_grad)
        assert (dx is None) != input_grad and (dx is None or dx.shape == x.shape)
        grads.append((model.grad_dict(), dict(counts)))
    (with_dx, counted_with), (without, counted_without) = grads
    assert all(np.array_equal(with_dx[k], without[k]) for k in with_dx) and list(with_dx) == list(without)
    assert counted_with["col2im"] == threads and "col2im" not in counted_without
    assert counted_without["matmul"] == counted_with["matmul"] - threads
