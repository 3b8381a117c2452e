"""benchmarks/accuracy_table.py: the README's accuracy table, per-recipe spread and curves from run directories."""
import importlib.util
import json
import os

import pytest

from npvit.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("accuracy_table", os.path.join(ROOT, "benchmarks",
                                                                                 "accuracy_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder, name, seed, accs, epochs=None, **cfg):
    """A run directory whose epochs take 60 s of training and 6 s of evaluation, evaluated every epoch."""
    run = folder / name
    run.mkdir()
    config = {"recipe": "sprint", "seed": seed, "epochs": epochs or len(accs), "val_split": 0, **cfg}
    (run / "config.json").write_text(json.dumps(config))
    key = "val_acc" if config["val_split"] else "test_acc"
    lines = [json.dumps({"epoch": e, "train_loss": 1.0, "seconds": 60.0, "eval_seconds": 6.0, key: a})
             for e, a in enumerate(accs, 1)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return str(run)


def test_summary_thresholds_and_flags(table, tmp_path):
    run = fake_run(tmp_path, "a", 42, [0.60, 0.71, 0.76, 0.74], ema=0.999)
    r = table.summarise(run, [0.70, 0.755, 0.80])
    assert (r["split"], r["epochs"], r["final"], r["best"], r["best_epoch"]) == ("test", "4/4", 0.74, 0.76, 3)
    assert r["reached"] == {"0.7": (2, 2.2), "0.755": (3, pytest.approx(3.3)), "0.8": None}
    assert r["minutes"] == pytest.approx(4.4)
    assert r["flags"] == "--epochs 4 --ema 0.999"      # what differs from the sprint recipe
    assert "| a | sprint | `--epochs 4 --ema 0.999` | 42 | 4/4 | test 74.00% | 76.00% (3) | 4 | 2, 2 | 3, 3 | " \
           "not reached |" in table.markdown([r], [0.70, 0.755, 0.80])


def test_held_out_runs_report_val(table, tmp_path):
    r = table.summarise(fake_run(tmp_path, "v", 1, [0.5, 0.6], val_split=5000), [0.55])
    assert (r["split"], r["final"], r["reached"]["0.55"][0]) == ("val", 0.6, 2)


def test_spread_groups_seeds_of_a_recipe(table, tmp_path):
    rows = [table.summarise(fake_run(tmp_path, f"s{seed}", seed, [0.5, acc]), [0.7])
            for seed, acc in ((42, 0.80), (43, 0.78))]
    rows.append(table.summarise(fake_run(tmp_path, "other", 42, [0.5, 0.9], ema=0.5), [0.7]))   # other flags
    rows.append(table.summarise(fake_run(tmp_path, "running", 44, [0.5, 0.1], epochs=10), [0.7]))  # not done
    rows.append(table.summarise(fake_run(tmp_path, "gpu", 42, [0.5, 0.7], backend="cupy"), [0.7]))  # not a seed
    rows.append(table.summarise(fake_run(tmp_path, "s43-rerun", 43, [0.5, 0.99]), [0.7]))  # nor is a rerun
    groups = table.spread(rows)
    assert len(groups) == 3 and groups[2]["backend"] == "cupy"
    g = groups[0]
    assert (g["seeds"], g["low"], g["high"]) == ([42, 43], 0.78, 0.80)
    assert g["mean"] == pytest.approx(0.79)
    assert "| sprint | `--epochs 2` | numpy | 42 / 43 | test 79.00% | 78.00% | 80.00% | 2.00 |" \
           in table.spread_markdown(groups)


def test_main_writes_json_and_names_bad_runs(table, tmp_path, capsys):
    run = fake_run(tmp_path, "a", 42, [0.6, 0.8])
    out = tmp_path / "acc.json"
    assert table.main([run, "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["recipes"][0]["seeds"] == [42] and saved["runs"][0]["final"] == 0.8
    assert "80.00%" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a run directory"):
        table.main([str(tmp_path)])
    empty = fake_run(tmp_path, "empty", 1, [])
    with pytest.raises(UserError, match="no evaluated epoch"):
        table.main([empty])


def test_include_brings_back_the_rows_of_runs_no_longer_at_hand(table, tmp_path, capsys):
    first = fake_run(tmp_path, "a-s1", 1, [0.5, 0.6])
    second = fake_run(tmp_path, "b-s2", 2, [0.55, 0.65])
    out = tmp_path / "rows.json"
    assert table.main([first, second, "--json", str(out)]) == 0
    capsys.readouterr()
    assert table.main([second, "--include", str(out), "--json", str(tmp_path / "again.json")]) == 0
    text = capsys.readouterr().out
    assert "a-s1" in text and text.count("| b-s2 |") == 1        # the directory's row replaces the included one
    assert len(json.load(open(tmp_path / "again.json"))["runs"]) == 2
    with pytest.raises(UserError, match="holds no rows written by --json"):
        table.main(["--include", first + "/config.json"])


def test_plot_only_draws_the_runs_it_names(table, tmp_path, monkeypatch):
    runs = [fake_run(tmp_path, name, seed, [0.5, 0.6]) for name, seed in (("fast-s1", 1), ("fast-s2", 2), ("old", 3))]
    drawn = []
    monkeypatch.setattr(table, "plot", lambda rows, path: drawn.append([r["seed"] for r in rows]))
    assert table.main(runs + ["--plot", str(tmp_path / "p.png"), "--plot-only", "fast-s*"]) == 0
    assert table.main(runs + ["--plot", str(tmp_path / "p.png")]) == 0
    assert drawn == [[1, 2], [1, 2, 3]]
    with pytest.raises(UserError, match="no run's name matches --plot-only nope"):
        table.main(runs + ["--plot", str(tmp_path / "p.png"), "--plot-only", "nope"])
