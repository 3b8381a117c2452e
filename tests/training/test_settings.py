"""The settings record: one typed, frozen Settings whose fields carry the options table, written and read as
the flat JSON of config.json, and the small records each part of a run reads from it."""
import dataclasses
import json

import pytest

from npvit.config import ViTConfig
from npvit.errors import ConfigError
from npvit.optim import Schedule, lr_at
from npvit.training.batches import Augmentation, DataSource
from npvit.training.settings import OPTIONS, RECIPES, Settings, build_config
from npvit.training.step import EvalPlan, StepRule


def test_the_fields_are_the_options_table():
    fields = [f for f in dataclasses.fields(Settings)]
    assert [f.name for f in fields] == list(OPTIONS) + ["model"]
    for f in fields[:-1]:
        option = f.metadata["option"]
        assert f.default == option.default and option.help and option.kind
    assert OPTIONS["schedule"].choices == ("constant", "cosine", "linear")
    assert set(RECIPES) == set(OPTIONS["recipe"].choices)
    assert set(ViTConfig.help()) == set(ViTConfig.keys()) and ViTConfig.help()["pooling"][1] == ("cls", "mean")


def test_settings_are_frozen_and_always_valid():
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0
    with pytest.raises(ConfigError, match="lr must be a positive finite number, got -1"):
        Settings(lr=-1)
    with pytest.raises(ConfigError, match="needs --ema"):
        Settings(eval_raw=True)
    with pytest.raises(ConfigError, match="model config: hidden_size 10 is not divisible"):
        Settings.from_dict({"hidden_size": 10})
    with pytest.raises(ConfigError, match=r"unknown config keys \['learning_rate'\]"):
        Settings.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="model must be a ViTConfig"):
        Settings(model={"hidden_size": 48})


def test_the_json_of_config_files_round_trips_in_its_old_order():
    s = build_config(recipe="fast80", overrides={"lr": 5e-3, "betas": [0.9, 0.98], "hidden_size": 64})
    flat = s.to_dict()
    assert list(flat) == list(OPTIONS) + ViTConfig.keys()       # training keys, then the model's: as always
    assert flat["betas"] == [0.9, 0.98] and flat["rrc_scale"] == [0.8, 1.0]   # JSON lists, tuples inside
    assert s.betas == (0.9, 0.98) and s.model.hidden_size == 64
    assert Settings.from_dict(json.loads(json.dumps(flat))) == s
    assert Settings.from_dict({}) == Settings()


def test_replace_takes_training_and_model_keys_and_checks_them():
    s = Settings().replace(epochs=3, hidden_size=24, num_attention_heads=3)
    assert s.epochs == 3 and s.model.hidden_size == 24 and s.model.num_attention_heads == 3
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        s.replace(epochs=0)


def test_each_part_reads_its_own_record():
    s = build_config(recipe="fast80", overrides={"val_split": 500, "train_limit": 4000, "eval_raw": True,
                                                 "micro_batch": 32, "grad_clip": 1.0, "num_classes": 7})
    assert s.lr_schedule == Schedule(3e-3, 100, 3.0, "cosine")
    assert lr_at(s.lr_schedule, 0, 10) == pytest.approx(3e-3 / 30)
    assert s.augmentation == Augmentation("crop_flip", 4, (0.8, 1.0), True, 0.5, 0.0, 0.0, 7)
    assert s.data == DataSource("cifar10", "./data", True, 4000, None, 500)
    assert s.evaluation == EvalPlan(every=5, batch_size=500, tta_flip=False, raw=True, split="val")
    assert s.step_rule == StepRule(label_smoothing=0.1, grad_clip=1.0, micro_batch=32)
    assert Settings().evaluation.split == "test"


@pytest.mark.parametrize("every, epochs, due", [(5, 12, [4, 9, 11]), (1, 3, [0, 1, 2]), (4, 4, [3])])
def test_an_evaluation_is_due_every_n_epochs_and_after_the_last(every, epochs, due):
    plan = EvalPlan(every=every)
    assert [e for e in range(epochs) if plan.due(e, epochs)] == due
