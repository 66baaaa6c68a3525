"""make compare's arithmetic and report (the runs themselves are ordinary CLI fits)."""

from __future__ import annotations

import pytest

from kd_detect.lab.compare import OURS, RGB, ROWS, TEACHER, markdown, summarise


def test_gap_closed_std_and_paired_difference():
    results = {RGB: {0: 0.50, 1: 0.52}, TEACHER: {0: 0.80, 1: 0.82}, OURS: {0: 0.65, 1: 0.69},
               "baselines/synthetic_logit_kd": {0: 0.49, 1: 0.51},
               "baselines/synthetic_fitnets": {1: 0.60}}
    rows = {r["experiment"]: r for r in summarise(results)}
    assert rows[OURS]["mean"] == pytest.approx(0.67)
    assert rows[OURS]["gap_closed"] == pytest.approx((0.67 - 0.51) / (0.81 - 0.51))
    assert rows["baselines/synthetic_logit_kd"]["gap_closed"] == pytest.approx((0.50 - 0.51) / 0.30)
    assert rows[RGB]["gap_closed"] is None and rows[TEACHER]["gap_closed"] is None
    assert rows[OURS]["std"] == pytest.approx(0.028284, abs=1e-6)
    # paired by seed: ours - rgb = +0.15, +0.17
    assert rows[OURS]["paired"]["mean"] == pytest.approx(0.16)
    assert rows[OURS]["paired"]["std"] == pytest.approx(0.014142, abs=1e-6)
    assert rows[OURS]["paired"]["above"] == 2
    assert rows["baselines/synthetic_logit_kd"]["paired"]["above"] == 0
    # a row with fewer seeds is paired on the seeds it has
    assert rows["baselines/synthetic_fitnets"]["paired"] == {"mean": pytest.approx(0.08), "std": 0.0, "runs": 1, "above": 1}
    assert rows[RGB]["paired"] is None
    table = markdown(list(rows.values()), [0, 1], [])
    assert "| Ours: atomic + global + boundary (λ=0.1) | ours | 2 | 67.00 ± 2.83 | +53% | +16.00 ± 1.41 | 2/2 |" in table
    assert "| logit KD | baseline | 2 | 50.00 ± 1.41 | -3% | -1.00 ± 0.00 | 0/2 |" in table
    assert "| RGB only | reference | 2 | 51.00 ± 1.41 |  |  |  |" in table


def test_every_row_is_an_experiment_file():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments"
    for _, exp, _ in ROWS:
        assert (root / f"{exp}.yaml").is_file(), exp


def test_reference_runs_come_from_the_reference_directory(tmp_path, monkeypatch):
    """With ``--reference``, the RGB-only and teacher rows (and the teacher checkpoint the
    students distil from) come from the reference comparison; finished runs are not redone."""
    import json

    from kd_detect.lab import compare

    ref, out = tmp_path / "compare", tmp_path / "variant"
    for seed, (rgb, teacher) in enumerate([(0.60, 0.90), (0.62, 0.94)]):
        for exp, value in ((RGB, rgb), (TEACHER, teacher)):
            (ref / f"seed{seed}" / exp).mkdir(parents=True)
            (ref / f"seed{seed}" / exp / "metrics.json").write_text(json.dumps({compare.METRIC: value}))
    (ref / "seed2" / RGB).mkdir(parents=True)  # a seed the variant does not have: not counted
    (ref / "seed2" / RGB / "metrics.json").write_text(json.dumps({compare.METRIC: 0.0}))
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        seed = int(next(a for a in cmd if a.startswith("--seed_everything=")).split("=")[1])
        run = next(a for a in cmd if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1]
        from pathlib import Path

        Path(run).mkdir(parents=True, exist_ok=True)
        (Path(run) / "metrics.json").write_text(json.dumps({compare.METRIC: 0.70 + seed / 100}))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(compare.subprocess, "run", fake_run)
    assert compare.main(["--seeds", "2", "--jobs", "1", "--out", str(out), "--reference", str(ref),
                         "--only", OURS, "--", "--model.init_args.distill.atomic.init_args.weight=0.3"]) == 0
    assert len(commands) == 2  # only the two students ran
    for seed, cmd in enumerate(commands):
        assert f"--model.init_args.teachers.teacher={ref / f'seed{seed}' / TEACHER / 'best.ckpt'}" in cmd
        assert "--model.init_args.distill.atomic.init_args.weight=0.3" in cmd
        assert f"--trainer.default_root_dir={out / f'seed{seed}' / OURS}" in cmd
    report = json.loads((out / "report.json").read_text())
    rows = {r["experiment"]: r for r in report["rows"]}
    assert rows[RGB]["values"] == [0.60, 0.62] and rows[TEACHER]["values"] == [0.90, 0.94]
    assert rows[OURS]["gap_closed"] == pytest.approx((0.705 - 0.61) / (0.92 - 0.61))
    text = (out / "report.md").read_text()
    assert f"--reference {ref}" in text and "weight=0.3" in text
