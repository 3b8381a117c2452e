"""The run state and the resume rules (npvit/training/runstate.py): where a run stands goes into a checkpoint's
metadata and comes back whole; the resume command and the refusals say what to do."""
import numpy as np
import pytest

from npvit import ViTConfig
from npvit.errors import CheckpointError
from npvit.training.runstate import (EpochTotals, RunState, check_resumable, read_resume, resume_command,
                                     resume_source)


def test_the_run_state_goes_into_the_metadata_and_comes_back_whole():
    state = RunState(epoch=3, step=17, best_acc=0.61, partial=EpochTotals(12.5, 40, 64, 3.25),
                     history=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], ema_updates=401, processes=2)
    back = RunState.from_meta({"train": state.train_meta(), "history": state.history})
    assert back == state
    fresh = RunState()
    assert RunState.from_meta({"train": fresh.train_meta()}) == fresh and "ema_updates" not in fresh.train_meta()
    assert fresh.describe_saved() == "the initial weights"
    assert state.describe_saved() == "epoch 3, step 17" and RunState(epoch=2).describe_saved() == "epoch 2"
    assert EpochTotals().plus(1.5, np.int64(3), 4, 0.5).plus(0.5, 1, 4, 0.25) == EpochTotals(2.0, 4, 8, 0.75)


def test_resume_says_how_on_as_many_processes():
    assert resume_command("runs/a") == "--resume runs/a"
    assert resume_command("runs/a", 4) == "mpiexec -n 4 ... --resume runs/a (the same 4 processes)"


def test_what_cannot_be_resumed_is_refused_in_words(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resume_source(tmp_path)
    (tmp_path / ".replacing").write_text("")
    with pytest.raises(CheckpointError, match="was being replaced by --overwrite"):
        resume_source(tmp_path)


def test_a_checkpoint_of_another_model_or_process_count_is_refused(tmp_path):
    from npvit import ViT
    from npvit.checkpoint import save_checkpoint
    from npvit.optim import AdamW
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=0)
    path = tmp_path / "latest.npz"
    save_checkpoint(path, model, AdamW(model), meta={"train": RunState(processes=2).train_meta(), "history": [],
                                                     "train_config": {"seed": 0}})
    resume = read_resume(tmp_path)
    with pytest.raises(CheckpointError, match=r"written by a run on 2 process\(es\)"):
        check_resumable(resume, ViTConfig.tiny(), processes=1)
    check_resumable(resume, ViTConfig.tiny(), processes=2)
    other = ViTConfig(**{**ViTConfig.tiny().to_dict(), "hidden_size": 24})
    with pytest.raises(CheckpointError, match="is for another model"):
        check_resumable(resume, other, processes=2)
    save_checkpoint(tmp_path / "weights.npz", model)
    with pytest.raises(CheckpointError, match="has no training state"):
        read_resume(tmp_path / "weights.npz")
