"""make compare's arithmetic and report (the runs themselves are ordinary CLI fits)."""

from __future__ import annotations

import pytest

from kd_detect.compare import OURS, RGB, ROWS, TEACHER, markdown, summarise


def test_gap_closed_and_std():
    results = {RGB: [0.50, 0.52], TEACHER: [0.80, 0.82], OURS: [0.65, 0.69],
               "baselines/synthetic_logit_kd": [0.49, 0.51]}
    rows = {r["experiment"]: r for r in summarise(results)}
    assert rows[OURS]["mean"] == pytest.approx(0.67)
    assert rows[OURS]["gap_closed"] == pytest.approx((0.67 - 0.51) / (0.81 - 0.51))
    assert rows["baselines/synthetic_logit_kd"]["gap_closed"] == pytest.approx((0.50 - 0.51) / 0.30)
    assert rows[RGB]["gap_closed"] is None and rows[TEACHER]["gap_closed"] is None
    assert rows[OURS]["std"] == pytest.approx(0.028284, abs=1e-6)
    table = markdown(list(rows.values()), [0, 1], [])
    assert "| Ours: atomic + global + boundary (λ=0.1) | ours | 2 | 67.00 ± 2.83 | +53% |" in table
    assert "| logit KD | baseline | 2 | 50.00 ± 1.41 | -3% |" in table


def test_every_row_is_an_experiment_file():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments"
    for _, exp, _ in ROWS:
        assert (root / f"{exp}.yaml").is_file(), exp
