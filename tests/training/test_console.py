"""What a run shows and hears (npvit/training/console.py): the epoch line, plain progress lines where there is no
terminal, the signals that save and stop, and a rank that does not speak."""
import io
import os
import signal

import pytest

from npvit.training import console
from npvit.training.console import STOP_SIGNALS, Console, Progress, StopRequest, epoch_line


def test_the_epoch_line_says_the_split_it_was_scored_on():
    r = {"epoch": 3, "train_loss": 1.23456, "train_acc": 0.5, "lr": 1e-3, "seconds": 12.34, "images_per_s": 4052.2}
    assert epoch_line(r, 10) == ("epoch   3/10 | train loss 1.2346 acc 0.5000 | lr 1.00e-03 | 12.3s 4052 img/s")
    assert "| test loss 0.5000 acc 0.8000 |" in epoch_line({**r, "test_loss": 0.5, "test_acc": 0.8}, 10)
    assert "| val loss 0.5000 acc 0.8000 |" in epoch_line({**r, "val_loss": 0.5, "val_acc": 0.8}, 10)


def test_progress_without_a_terminal_is_a_plain_line_every_so_often(monkeypatch):
    out = io.StringIO()                                          # not a terminal
    monkeypatch.setattr(console, "PLAIN_PROGRESS_S", 0.0)
    p = Progress(True, steps=20, start=0, epoch=1, epochs=5, stream=out)
    p.step()
    p.show(10, 0.75, 0.5, 1234.0, 3e-3)
    assert out.getvalue() == "epoch 2/5 step 10/20 | loss 0.7500 acc 0.500 | 1234 img/s | lr 3.00e-03\n"
    quiet = io.StringIO()
    Progress(False, 20, 0, 1, 5, quiet).show(10, 0.75, 0.5, 1234.0, 3e-3)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_each_stop_signal_asks_to_save_and_stop_and_the_handlers_are_put_back(name):
    signum = getattr(signal, name)
    assert signum in STOP_SIGNALS
    before = signal.getsignal(signum)
    note = io.StringIO()
    with StopRequest() as stop:
        stop.note = note
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.reason == name
        assert "stopping: finishing this step and saving a checkpoint" in note.getvalue()
        if name == "SIGINT":                                     # a second Ctrl-C stops at once
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signum)
    assert signal.getsignal(signum) == before


def test_a_rank_that_does_not_speak_prints_nothing(capsys):
    lines = []
    Console(log=lines.append, speaks=False).log("hello")
    Console(log=lines.append, speaks=False).note("a note")
    assert lines == [] and capsys.readouterr().err == ""
    Console(log=lines.append).log("hello")
    assert lines == ["hello"]
