"""``python -m kd_detect.lab.pair``: two rows of runs from different directories, paired by seed."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from kd_detect.errors import UsageError
from kd_detect.lab import pair as pair_mod
from kd_detect.lab.pair import Side, pair, parse_sides

EXP = "synthetic_kd"


def _run(root, seed, exp=EXP, test=0.5, val=None, order=None, metrics_extra=None):
    """A finished run as ``make compare`` leaves it: metrics.json (+ selection) and config.yaml."""
    run = root / f"seed{seed}" / exp
    run.mkdir(parents=True)
    metrics = {"test/frame_map": test, **(metrics_extra or {})}
    if val is not None:
        metrics["selection"] = {"monitor": "val/frame_map", "mode": "max", "score": val}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed, "data": {"seed": order}}))
    return run


def test_pairs_on_the_common_seeds_with_a_hand_computed_t_interval(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, t, v in [(0, 0.60, 0.70), (1, 0.62, 0.71), (2, 0.65, 0.72)]:
        _run(a, seed, test=t, val=v)
    for seed, t, v in [(1, 0.60, 0.72), (2, 0.61, 0.70), (3, 0.99, 0.99)]:
        _run(b, seed, test=t, val=v)
    _run(a, 3, exp="other", test=0.1)  # another experiment of A: not read
    (a / "seed4" / EXP).mkdir(parents=True)  # an unfinished run: not a seed of A
    result = pair(Side(a, EXP), Side(b, EXP))
    assert result["seeds"] == [1, 2]
    # differences +0.02 and +0.04: mean 0.03, s = 0.02/sqrt(2), t_{0.975,1} = 12.706
    half = 12.706 * (0.02 / math.sqrt(2)) / math.sqrt(2)
    t = result["test"]
    assert t["mean"] == pytest.approx(0.03) and t["above"] == 2 and t["runs"] == 2
    assert t["ci95"] == pytest.approx((0.03 - half, 0.03 + half))
    v = result["validation"]  # -0.01 and +0.02
    assert v["mean"] == pytest.approx(0.005) and v["above"] == 1
    table = pair_mod.markdown(result)
    assert "| 1 | 62.00 | 60.00 | +2.00 | 71.00 | 72.00 | -1.00 |" in table
    assert "| mean | 63.50 | 60.50 | +3.00 [-9.71, +15.71], 2/2 |" in table


def test_a_side_without_an_experiment_takes_the_others():
    a, b = parse_sides("runs/x:ablations/synthetic_kd_clean", "runs/y")
    assert (a.root.as_posix(), a.experiment) == ("runs/x", "ablations/synthetic_kd_clean")
    assert (b.root.as_posix(), b.experiment) == ("runs/y", "ablations/synthetic_kd_clean")
    a, b = parse_sides("runs/x", "runs/y:synthetic_rgb")
    assert (a.experiment, b.experiment) == ("synthetic_rgb", "synthetic_rgb")
    with pytest.raises(UsageError, match="name the experiment on at least one side"):
        parse_sides("runs/x", "runs/y")


def test_another_metric_of_metrics_json_is_paired(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 0, test=0.5, metrics_extra={"test/event_map": 0.30})
    _run(b, 0, test=0.4, metrics_extra={"test/event_map": 0.25})
    assert pair(Side(a, EXP), Side(b, EXP), "test/event_map")["test"]["mean"] == pytest.approx(0.05)
    with pytest.raises(UsageError, match=r"metrics.json: no 'test/nope' \(it has test/event_map, test/frame_map\)"):
        pair(Side(a, EXP), Side(b, EXP), "test/nope")
    _run(b, 1, test=None)  # a run that wrote null for its figure
    _run(a, 1, test=0.5)
    with pytest.raises(UsageError, match=r"b/seed1/synthetic_kd/metrics.json: 'test/frame_map': expected a number, got None"):
        pair(Side(a, EXP), Side(b, EXP))


def test_runs_of_one_seed_in_different_orders_are_not_a_pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 0, order=None)  # follows its seed: order 0
    _run(b, 0, order=5)
    with pytest.raises(UsageError, match=r"seed 0: .*a/seed0/synthetic_kd trained .* order of seed 0, .*b/seed0/"
                                         r"synthetic_kd in that of seed 5: not a pair"):
        pair(Side(a, EXP), Side(b, EXP))


@pytest.mark.parametrize("case, message", [
    ("missing", "comparison directory not found"),
    ("empty", "no finished run"),
    ("disjoint", "no seed in common"),
    ("same", "the same runs on both sides"),
])
def test_what_cannot_be_paired_is_refused_in_one_line(tmp_path, case, message):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 0)
    if case == "empty":
        b.mkdir()
    if case == "disjoint":
        _run(b, 1)
    other = Side(a / ".", EXP) if case == "same" else Side(b, EXP)
    with pytest.raises(UsageError, match=message):
        pair(Side(a, EXP), other)


def test_the_command_prints_the_table_and_writes_json_but_never_over_an_input(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, 0, test=0.7, val=0.8)
    run_b = _run(b, 0, test=0.6, val=0.8)
    out = tmp_path / "pair.json"
    assert pair_mod.main([f"{a}:{EXP}", str(b), "--json", str(out)]) == 0
    assert "| 0 | 70.00 | 60.00 | +10.00 | 80.00 | 80.00 | +0.00 |" in capsys.readouterr().out
    stored = json.loads(out.read_text())
    assert stored["seeds"] == [0] and stored["test"]["mean"] == pytest.approx(0.1)
    before = (run_b / "metrics.json").read_text()
    assert pair_mod.main([f"{a}:{EXP}", str(b), "--json", str(run_b / "metrics.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to write the output over the input" in err
    assert (run_b / "metrics.json").read_text() == before
