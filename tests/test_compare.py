"""make compare's arithmetic and report (the runs themselves are ordinary CLI fits)."""

from __future__ import annotations

import pytest

from kd_detect.lab.compare import CEILING, COMPUTED, OURS, PROBE, RGB, ROWS, TEACHER, markdown, summarise, t_interval


def test_gap_closed_std_and_paired_difference():
    results = {RGB: {0: 0.50, 1: 0.52}, TEACHER: {0: 0.80, 1: 0.82}, OURS: {0: 0.65, 1: 0.69},
               CEILING: {0: 0.60, 1: 0.62}, PROBE: {0: 0.55, 1: 0.55},
               "baselines/synthetic_logit_kd": {0: 0.49, 1: 0.51},
               "baselines/synthetic_fitnets": {1: 0.60}}
    rows = {r["experiment"]: r for r in summarise(results)}
    assert rows[OURS]["mean"] == pytest.approx(0.67)
    assert rows[OURS]["gap_closed"] == pytest.approx((0.67 - 0.51) / (0.81 - 0.51))
    assert rows["baselines/synthetic_logit_kd"]["gap_closed"] == pytest.approx((0.50 - 0.51) / 0.30)
    assert rows[OURS]["gap_closed_ceiling"] == pytest.approx((0.67 - 0.51) / (0.61 - 0.51))
    # a row of fewer seeds is set against the references on its own seeds (seed 1: RGB 0.52,
    # teacher 0.82, ceiling 0.62), not against their means over seeds it does not have
    assert rows["baselines/synthetic_fitnets"]["gap_closed"] == pytest.approx((0.60 - 0.52) / (0.82 - 0.52))
    assert rows["baselines/synthetic_fitnets"]["gap_closed_ceiling"] == pytest.approx((0.60 - 0.52) / (0.62 - 0.52))
    for ref in (RGB, TEACHER, CEILING, PROBE):
        assert rows[ref]["gap_closed"] is None and rows[ref]["gap_closed_ceiling"] is None
    # the probe is paired with each seed's RGB run: 0.55 - 0.50, 0.55 - 0.52
    assert rows[PROBE]["paired"]["mean"] == pytest.approx(0.04) and rows[PROBE]["paired"]["above"] == 2
    # 95 % t interval of +0.15, +0.17: 0.16 ± 12.706 · 0.014142 / √2
    lo, hi = rows[OURS]["paired"]["ci95"]
    assert lo == pytest.approx(0.16 - 0.127062, abs=1e-5) and hi == pytest.approx(0.16 + 0.127062, abs=1e-5)
    assert rows[OURS]["std"] == pytest.approx(0.028284, abs=1e-6)
    # paired by seed: ours - rgb = +0.15, +0.17
    assert rows[OURS]["paired"]["mean"] == pytest.approx(0.16)
    assert rows[OURS]["paired"]["std"] == pytest.approx(0.014142, abs=1e-6)
    assert rows[OURS]["paired"]["above"] == 2
    assert rows["baselines/synthetic_logit_kd"]["paired"]["above"] == 0
    # a row with fewer seeds is paired on the seeds it has
    assert rows["baselines/synthetic_fitnets"]["paired"] == {"mean": pytest.approx(0.08), "std": 0.0, "runs": 1,
                                                             "above": 1, "ci95": None}
    assert rows[RGB]["paired"] is None
    table = markdown(list(rows.values()), [0, 1], [])
    assert ("| Ours: atomic (same-video negatives) + global + boundary, weight: auto | ours | 2 | 67.00 ± 2.83 | +53% | +160% | +16.00 ± 1.41 "
            "| [+3.29, +28.71] | 2/2 |") in table
    assert "| logit KD | baseline | 2 | 50.00 ± 1.41 | -3% | -10% | -1.00 ± 0.00 | [-1.00, -1.00] | 0/2 |" in table
    assert "| RGB only | reference | 2 | 51.00 ± 1.41 |  |  |  |  |  |" in table


def test_ours_against_each_ablation_and_baseline_is_paired_by_seed():
    """The second table: ours − row per seed, so a "without X" row gives X's leave-one-out
    cost. Hand-computed: ours − without atomic = +0.02, −0.01, +0.04 (mean 0.01667, 2 of 3)."""
    results = {RGB: {0: 0.5, 1: 0.5, 2: 0.5}, TEACHER: {0: 0.7, 1: 0.7, 2: 0.7},
               OURS: {0: 0.60, 1: 0.62, 2: 0.64},
               "ablations/synthetic_without_atomic": {0: 0.58, 1: 0.63, 2: 0.60},
               "baselines/synthetic_crd": {1: 0.52, 2: 0.66, 3: 0.9}}  # seed 3 has no ours: left out
    rows = {r["experiment"]: r for r in summarise(results)}
    loo = rows["ablations/synthetic_without_atomic"]["ours_minus_row"]
    assert loo["mean"] == pytest.approx(0.05 / 3) and loo["above"] == 2 and loo["runs"] == 3
    assert loo["ci95"] == pytest.approx(t_interval([0.02, -0.01, 0.04]))
    crd = rows["baselines/synthetic_crd"]["ours_minus_row"]
    assert crd["runs"] == 2 and crd["mean"] == pytest.approx((0.10 - 0.02) / 2) and crd["above"] == 1
    assert "ours_minus_row" not in rows[OURS] and "ours_minus_row" not in rows[TEACHER]
    table = markdown(list(rows.values()), [0, 1, 2], [])
    assert "| without atomic | ours | ablation | 3 | +1.67 ± 2.52 |" in table
    assert "| CRD | ours | baseline | 2 | +4.00 ± 8.49 | [-72.24, +80.24] | 1/2 | | |" in table  # no validation figures


def test_a_variant_of_the_recipe_is_paired_against_the_recipe_not_the_labelled_only_student():
    """A baseline in the recipe's setting (its loss + logit KD on the unlabelled videos) and a
    leave-one-out inside the recipe change one thing of the recipe, so "ours − row" is the
    recipe − row. Hand-computed: recipe − FitNets+logit KD = +0.03, −0.01, +0.01 (mean +0.01,
    2 of 3); ours (labelled-only) would give −0.04, −0.05, −0.03 instead."""
    from kd_detect.lab import compare

    fitnets = "ablations/synthetic_fitnets_plus_logit_kd_unlabelled"
    assert fitnets in compare.BASELINES_UNLABELLED and compare.VERSUS[fitnets] == compare.LOGIT_UNLABELLED
    results = {RGB: {0: 0.5, 1: 0.5, 2: 0.5}, OURS: {0: 0.55, 1: 0.56, 2: 0.57},
               compare.LOGIT_UNLABELLED: {0: 0.62, 1: 0.60, 2: 0.61},
               fitnets: {0: 0.59, 1: 0.61, 2: 0.60},
               compare.RECIPE_WITHOUT[0]: {0: 0.62, 1: 0.60, 2: 0.60}}
    rows = {r["experiment"]: r for r in summarise(results)}
    p = rows[fitnets]["ours_minus_row"]
    assert p["mean"] == pytest.approx(0.01) and p["above"] == 2 and p["runs"] == 3
    assert rows[compare.RECIPE_WITHOUT[0]]["ours_minus_row"]["mean"] == pytest.approx(0.01 / 3)
    assert rows[compare.LOGIT_UNLABELLED]["ours_minus_row"]["mean"] == pytest.approx(-0.05)  # the recipe: ours − it
    table = markdown(list(rows.values()), [0, 1, 2], [])
    assert "| FitNets, weight: auto + logit KD + 432 unlabelled videos (the second row with FitNets for the three " \
           "losses) | Ours + logit KD + 432 unlabelled videos | baseline | 3 | +1.00 ± 2.00 |" in table


def test_ours_minus_row_on_validation_sits_beside_the_test_split():
    """With the validation figures the checkpoints were chosen on, each ablation also gets
    ours − row on validation, paired by seed. Hand-computed: test +0.02, −0.01, +0.04;
    validation −0.03, −0.01, +0.01 (mean −0.01, ours above on 1 of 3): the splits disagree."""
    test = {RGB: {0: 0.5, 1: 0.5, 2: 0.5}, OURS: {0: 0.60, 1: 0.62, 2: 0.64},
            "ablations/synthetic_without_atomic": {0: 0.58, 1: 0.63, 2: 0.60}}
    val = {RGB: {0: 0.6, 1: 0.6, 2: 0.6}, OURS: {0: 0.70, 1: 0.71, 2: 0.72},
           "ablations/synthetic_without_atomic": {0: 0.73, 1: 0.72, 2: 0.71}}
    rows = {r["experiment"]: r for r in summarise(test, val)}
    v = rows["ablations/synthetic_without_atomic"]["ours_minus_row_val"]
    assert v["mean"] == pytest.approx(-0.01) and v["above"] == 1 and v["runs"] == 3
    assert rows["ablations/synthetic_without_atomic"]["ours_minus_row"]["above"] == 2
    assert "ours_minus_row_val" not in rows[OURS]
    table = markdown(list(rows.values()), [0, 1, 2], [])
    assert "| without atomic | ours | ablation | 3 | +1.67 ± 2.52 | [-4.59, +7.92] | 2/3 | -1.00 | 1/3 |" in table


def test_collect_reads_the_selection_figure_of_each_run(tmp_path):
    import json

    from kd_detect.lab.compare import collect

    for seed, (t, v) in enumerate([(0.5, 0.6), (0.52, None)]):
        run = tmp_path / f"seed{seed}" / RGB
        run.mkdir(parents=True)
        metrics = {"test/frame_map": t}
        if v is not None:
            metrics["selection"] = {"monitor": "val/frame_map", "mode": "max", "score": v}
        (run / "metrics.json").write_text(json.dumps(metrics))
    assert collect(tmp_path)[RGB] == {0: 0.5, 1: 0.52}
    assert collect(tmp_path, validation=True)[RGB] == {0: 0.6}  # seed 1 recorded none: left out


def test_t_interval_against_tabulated_quantiles():
    # n = 5: t_{0.975, 4} = 2.776; values 1..5 have mean 3 and s = sqrt(2.5)
    lo, hi = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert hi - 3.0 == pytest.approx(2.776 * 2.5**0.5 / 5**0.5) and lo + hi == pytest.approx(6.0)
    assert t_interval([1.0]) is None
    # beyond the table the normal quantile is used
    xs = [float(i % 2) for i in range(40)]
    lo, hi = t_interval(xs)
    import statistics

    assert hi - 0.5 == pytest.approx(1.96 * statistics.stdev(xs) / 40**0.5)


def test_every_row_is_an_experiment_file():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments"
    for _, exp, _ in ROWS:
        assert exp in COMPUTED or (root / f"{exp}.yaml").is_file(), exp


def test_reference_runs_come_from_the_reference_directory(tmp_path, monkeypatch):
    """With ``--reference``, the RGB-only and teacher rows (and the teacher checkpoint the
    students distil from) come from the reference comparison; finished runs are not redone."""
    import json

    from kd_detect.lab import compare

    ref, out = tmp_path / "compare", tmp_path / "variant"
    for seed, (rgb, teacher, ceiling) in enumerate([(0.60, 0.90, 0.70), (0.62, 0.94, 0.72)]):
        for exp, value in ((RGB, rgb), (TEACHER, teacher), (CEILING, ceiling)):
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
    assert rows[OURS]["gap_closed_ceiling"] == pytest.approx((0.705 - 0.61) / (0.71 - 0.61))
    assert rows[CEILING]["values"] == [0.70, 0.72]
    text = (out / "report.md").read_text()
    assert f"--reference {ref}" in text and "weight=0.3" in text


def test_probe_row_is_read_once_and_paired_with_every_rgb_seed(tmp_path):
    import json

    from kd_detect.lab import compare

    for seed, rgb in enumerate([0.60, 0.64]):
        (tmp_path / f"seed{seed}" / RGB).mkdir(parents=True)
        (tmp_path / f"seed{seed}" / RGB / "metrics.json").write_text(json.dumps({compare.METRIC: rgb}))
    (tmp_path / "probe.json").write_text(json.dumps({compare.METRIC: 0.62}))
    results = compare.collect(tmp_path)
    assert results[PROBE] == {0: 0.62, 1: 0.62}
    row = next(r for r in summarise(results) if r["experiment"] == PROBE)
    assert row["paired"]["above"] == 1 and row["paired"]["mean"] == pytest.approx(0.0)
    # an existing probe.json is not recomputed (the file named does not even exist)
    assert compare.run_probe(tmp_path, "missing.h5") == 0.62


def test_compare_refuses_a_benchmark_file_of_another_calibration(tmp_path, monkeypatch, capsys):
    """A stale data/synthetic.h5 (an earlier calibration of v2) would mix worlds in one
    table: make compare stops with one line before any fit, and the file is untouched."""
    import h5py

    from data_prep.synthetic import generate
    from kd_detect.lab import compare

    monkeypatch.chdir(tmp_path)
    generate("data/synthetic.h5")
    with h5py.File("data/synthetic.h5", "r+") as h5:
        h5.attrs["generator_revision"] = 1
    before = (tmp_path / "data/synthetic.h5").read_bytes()
    assert compare.main(["--seeds", "1", "--out", "runs/c"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data/synthetic.h5 is not the synthetic benchmark")
    assert "revision 1 of the v2 world" in err
    assert not (tmp_path / "runs").exists() and (tmp_path / "data/synthetic.h5").read_bytes() == before


def test_compare_checks_each_file_against_its_own_recipe(tmp_path):
    from data_prep.synthetic import generate
    from kd_detect.errors import UsageError
    from kd_detect.lab import compare

    path = str(generate(tmp_path / "c.h5", videos=6, extra_training=2))
    compare.check_data({path: {"videos": 6, "extra_training": 2}})  # the recipe's options: accepted
    with pytest.raises(UsageError, match="--extra-training 2 --videos 6"):
        compare.check_data({path: {"videos": 6}})
    compare.check_data({str(tmp_path / "missing.h5"): {}})  # missing: left to the fit


def test_compare_expects_the_ceiling_file_the_makefile_makes():
    """make compare's check and the Makefile's rule must name the same generator options,
    or compare would refuse the Makefile's own ceiling file."""
    import re
    from pathlib import Path

    from kd_detect.lab import compare

    rule = re.search(r"^data/synthetic_ceiling\.h5:.*\n\t(.*)$", Path("Makefile").read_text(), re.M).group(1)
    given = dict(re.findall(r"--([a-z-]+) (\S+)", rule.split("--out $@", 1)[1]))
    assert {k.replace("-", "_"): int(v) for k, v in given.items()} == compare.DATA_FILES["data/synthetic_ceiling.h5"]
    assert compare.DATA_FILES["data/synthetic.h5"] == {}


def _fake_fits(monkeypatch) -> list[list[str]]:
    """Replace make compare's fits by a stub that records each command and writes the run's
    metrics.json (test figure 0.5); returns the list the commands are appended to."""
    import json
    from pathlib import Path

    from kd_detect.lab import compare

    commands: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        run = next(a for a in cmd if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1]
        Path(run).mkdir(parents=True, exist_ok=True)
        (Path(run) / "metrics.json").write_text(json.dumps({compare.METRIC: 0.5}))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(compare.subprocess, "run", fake_run)
    return commands


@pytest.mark.parametrize("student,teacher", [
    ("ablations/synthetic_kd_flowpose_teacher", "synthetic_teacher_flowpose"),
    ("ablations/synthetic_kd_moddrop_teacher", "synthetic_teacher_moddrop"),
    ("ablations/synthetic_kd_no_input_dropout_teacher", "synthetic_teacher_no_input_dropout"),
])
def test_a_student_of_another_teacher_gets_that_teacher(tmp_path, monkeypatch, student, teacher):
    """``ablations/synthetic_kd_flowpose_teacher`` distils from the flow+pose teacher of its
    own seed (the ModDrop and input-dropout teachers' students likewise), which runs first
    (on the students' seeds) and is not itself a student."""
    import json

    from kd_detect.lab import compare

    commands = _fake_fits(monkeypatch)
    out = tmp_path / "c"
    assert compare.main(["--seeds", "3", "--ablation-seeds", "2", "--jobs", "1", "--out", str(out),
                         "--only", student, "--", "--data.path=x.h5"]) == 0
    ran = {(c[c.index("--config") + 1], next(a for a in c if a.startswith("--seed_everything="))): c
           for c in commands}
    tr = {s: c for (cfg, s), c in ran.items() if cfg == f"experiments/{teacher}.yaml"}
    kd = {s: c for (cfg, s), c in ran.items() if cfg == f"experiments/{student}.yaml"}
    assert sorted(tr) == sorted(kd) == ["--seed_everything=0", "--seed_everything=1"]
    # another world (--data.path): no RGB-ceiling runs, which would be plain RGB-only on that file
    assert not any(cfg == f"experiments/{compare.CEILING}.yaml" for cfg, _ in ran)
    assert any(cfg == f"experiments/{compare.RGB}.yaml" for cfg, _ in ran)
    for seed in (0, 1):
        assert not any(a.startswith("--model.init_args.teachers.teacher=") for a in tr[f"--seed_everything={seed}"])
        assert (f"--model.init_args.teachers.teacher={out / f'seed{seed}' / teacher / 'best.ckpt'}"
                in kd[f"--seed_everything={seed}"])
    # every flow+pose teacher ran before any of its students
    order = [c[c.index("--config") + 1] for c in commands]
    assert max(i for i, c in enumerate(order) if teacher in c) < min(
        i for i, c in enumerate(order) if student in c)
    rows = {r["experiment"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows[teacher]["gap_closed"] is None and rows[teacher]["group"] == "teacher"
    assert "ours_minus_row" not in rows[teacher]


@pytest.mark.parametrize("control,student", [("RGB_MIXUP", "ablations/synthetic_kd_mixup"),
                                             ("RGB_DECOMPOSED", "ablations/synthetic_kd_decomposed"),
                                             ("RGB_TIME_STRETCH", "ablations/synthetic_kd_time_stretch"),
                                             ("RGB_INPUT_KERNEL", "ablations/synthetic_kd_input_kernel5"),
                                             ("RGB_COSINE", "ablations/synthetic_kd_cosine")])
def test_a_labels_only_control_is_trained_from_labels_and_its_student_from_the_teacher(
        tmp_path, monkeypatch, control, student):
    """``ablations/synthetic_rgb_mixup`` is RGB-only with mixup, ``ablations/synthetic_rgb_decomposed``
    RGB-only with the decomposed head, ``ablations/synthetic_rgb_time_stretch`` RGB-only with
    the time stretch, ``..._input_kernel5`` and ``..._cosine`` RGB-only with a wider input
    projection and the cosine schedule: no teacher is passed to them (a detector has no
    ``teachers``); the students they control get the teacher of their seed."""
    from kd_detect.lab import compare

    commands = _fake_fits(monkeypatch)
    out = tmp_path / "c"
    control = getattr(compare, control)
    assert control in compare.LABELS_ONLY
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(out), "--only",
                         control, student, "--", "--data.path=x.h5"]) == 0
    by_config: dict[str, list[list[str]]] = {}
    for c in commands:
        by_config.setdefault(c[c.index("--config") + 1], []).append(c)
    controls, students = by_config[f"experiments/{control}.yaml"], by_config[f"experiments/{student}.yaml"]
    assert len(controls) == len(students) == 2
    assert not any(a.startswith("--model.init_args.teachers") for c in controls for a in c)
    for c in students:
        seed = next(a for a in c if a.startswith("--seed_everything=")).split("=")[1]
        assert f"--model.init_args.teachers.teacher={out / f'seed{seed}' / compare.TEACHER / 'best.ckpt'}" in c


def test_the_two_teacher_student_gets_both_named_teachers_of_its_seed(tmp_path, monkeypatch):
    """``synthetic_kd_two_teachers`` names its teachers ``flow`` and ``pose`` in its config;
    make compare trains the RGB+flow and RGB+pose teachers of each of its seeds first and
    passes each checkpoint under its own name (not as ``teacher``)."""
    import json

    from kd_detect.lab import compare

    commands = _fake_fits(monkeypatch)
    out = tmp_path / "c"
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(out),
                         "--only", compare.TWO_TEACHERS, "--", "--data.path=x.h5"]) == 0
    configs = [c[c.index("--config") + 1] for c in commands]
    student = [c for c in commands if c[c.index("--config") + 1] == f"experiments/{compare.TWO_TEACHERS}.yaml"]
    assert len(student) == 2
    for cmd in student:
        seed = next(a for a in cmd if a.startswith("--seed_everything=")).split("=")[1]
        given = sorted(a for a in cmd if a.startswith("--model.init_args.teachers."))
        assert given == [
            f"--model.init_args.teachers.flow={out / f'seed{seed}' / compare.FLOW_TEACHER / 'best.ckpt'}",
            f"--model.init_args.teachers.pose={out / f'seed{seed}' / compare.POSE_TEACHER / 'best.ckpt'}",
        ]
    first_student = configs.index(f"experiments/{compare.TWO_TEACHERS}.yaml")
    for teacher in (compare.FLOW_TEACHER, compare.POSE_TEACHER):
        ran = [i for i, c in enumerate(configs) if c == f"experiments/{teacher}.yaml"]
        assert len(ran) == 2 and max(ran) < first_student
    rows = {r["experiment"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows[compare.FLOW_TEACHER]["group"] == "teacher" and rows[compare.FLOW_TEACHER]["gap_closed"] is None
    assert rows[compare.TWO_TEACHERS]["group"] == "ablation" and "ours_minus_row" in rows[compare.TWO_TEACHERS]


@pytest.mark.parametrize("student,group", [("ablations/synthetic_kd_rgb_teacher", "ablation"),
                                           ("ablations/synthetic_fitnets_decomposed_rgb_teacher", "baseline"),
                                           ("ablations/synthetic_fitnets_decomposed_detached_rgb_teacher", "baseline")])
def test_the_self_distillation_control_gets_an_rgb_only_teacher_of_another_training_seed(
        tmp_path, monkeypatch, student, group):
    """``ablations/synthetic_kd_rgb_teacher`` (and the hallucination branch's control) distil
    from the RGB-only recipe trained as a teacher with ``--seed_everything`` = seed + 100 (kept
    under ``seed<s>``), so the teacher is neither the student's own initialisation nor the
    RGB-only run it is paired against."""
    import json
    from pathlib import Path

    from kd_detect.lab import compare

    commands = _fake_fits(monkeypatch)
    out = tmp_path / "c"
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(out),
                         "--only", student, "--", "--data.path=x.h5"]) == 0
    seeds = {}
    for c in commands:
        cfg = c[c.index("--config") + 1]
        root = next(a for a in c if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1]
        seed = next(a for a in c if a.startswith("--seed_everything=")).split("=")[1]
        seeds.setdefault(cfg, []).append((Path(root).relative_to(out).parts[0], seed, c))
    teacher = sorted((d, s) for d, s, _ in seeds[f"experiments/{compare.RGB_TEACHER}.yaml"])
    assert teacher == [("seed0", "100"), ("seed1", "101")]
    rgb = sorted((d, s) for d, s, _ in seeds[f"experiments/{compare.RGB}.yaml"])
    assert rgb == [("seed0", "0"), ("seed1", "1")]
    for d, s, cmd in seeds[f"experiments/{student}.yaml"]:
        assert s == d[len("seed"):]  # the student keeps its own seed, paired with RGB-only's
        assert f"--model.init_args.teachers.teacher={out / d / compare.RGB_TEACHER / 'best.ckpt'}" in cmd
    order = [c[c.index("--config") + 1] for c in commands]
    assert max(i for i, c in enumerate(order) if compare.RGB_TEACHER in c) < min(
        i for i, c in enumerate(order) if student in c)
    rows = {r["experiment"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows[compare.RGB_TEACHER]["group"] == "teacher" and "ours_minus_row" not in rows[compare.RGB_TEACHER]
    assert rows[student]["group"] == group


@pytest.mark.parametrize("student, name, other, offset", [
    ("ablations/synthetic_kd_rgb_and_full_teachers", "rgb", "RGB_TEACHER", 100),
    ("ablations/synthetic_kd_teacher_ensemble", "second", "SECOND_TEACHER", 200),
])
def test_a_student_of_the_full_and_another_teacher_gets_both_of_its_seed(tmp_path, monkeypatch, student, name,
                                                                        other, offset):
    """``ablations/synthetic_kd_rgb_and_full_teachers`` names ``teacher`` (RGB+flow+pose) and
    ``rgb`` (the control's RGB-only teacher, seed + 100), ``ablations/synthetic_kd_teacher_ensemble``
    ``teacher`` and ``second`` (the same recipe trained from seed + 200); each gets both
    checkpoints of its seed, and the other teacher trains from its offset seed."""
    from kd_detect.lab import compare

    other = getattr(compare, other)
    commands = _fake_fits(monkeypatch)
    out = tmp_path / "c"
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(out),
                         "--only", student, "--", "--data.path=x.h5"]) == 0
    runs = [c for c in commands if c[c.index("--config") + 1] == f"experiments/{student}.yaml"]
    assert len(runs) == 2
    for cmd in runs:
        seed = next(a for a in cmd if a.startswith("--seed_everything=")).split("=")[1]
        assert sorted(a for a in cmd if a.startswith("--model.init_args.teachers.")) == sorted([
            f"--model.init_args.teachers.{name}={out / f'seed{seed}' / other / 'best.ckpt'}",
            f"--model.init_args.teachers.teacher={out / f'seed{seed}' / compare.TEACHER / 'best.ckpt'}",
        ])
    assert sorted(next(a for a in c if a.startswith("--seed_everything=")) for c in commands
                  if c[c.index("--config") + 1] == f"experiments/{other}.yaml") == [
        f"--seed_everything={offset}", f"--seed_everything={offset + 1}"]


@pytest.mark.parametrize("student, base, offset", [
    ("ablations/synthetic_kd_cross_fitted", "synthetic_teacher", 0),
    ("ablations/synthetic_kd_rgb_teacher_cross_fitted", "synthetic_teacher_rgb", 100),
    ("ablations/synthetic_logit_kd_cross_fitted", "synthetic_teacher", 0),
    ("ablations/synthetic_logit_kd_rgb_teacher_cross_fitted", "synthetic_teacher_rgb", 100),
])
def test_a_cross_fitted_student_gets_its_four_fold_teachers_of_its_seed_in_fold_order(
        tmp_path, monkeypatch, student, base, offset):
    """The cross-fitted rows train the 4 fold teachers (``experiments/folds/<teacher>_fold<k>``,
    the RGB-only ones at seed + 100 like the plain control's teacher) of each seed before any
    student, and pass their checkpoints as one list, fold 0 first."""
    from pathlib import Path

    from kd_detect.lab import compare

    commands = _fake_fits(monkeypatch)
    out = tmp_path / "c"
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(out),
                         "--only", student, "--", "--data.path=x.h5"]) == 0
    configs = [c[c.index("--config") + 1] for c in commands]
    folds = [f"folds/{base}_fold{k}" for k in range(4)]
    assert compare.TEACHER_OF[student] == {"teacher": folds}
    for fold in folds:
        assert (Path(__file__).resolve().parents[1] / "experiments" / f"{fold}.yaml").is_file()
        ran = sorted(next(a for a in c if a.startswith("--seed_everything=")) for c in commands
                     if c[c.index("--config") + 1] == f"experiments/{fold}.yaml")
        assert ran == [f"--seed_everything={offset}", f"--seed_everything={offset + 1}"]
    first_student = configs.index(f"experiments/{student}.yaml")
    assert max(i for i, c in enumerate(configs) if "/folds/" in c) < first_student
    runs = [c for c in commands if c[c.index("--config") + 1] == f"experiments/{student}.yaml"]
    assert len(runs) == 2
    for cmd in runs:
        seed = next(a for a in cmd if a.startswith("--seed_everything=")).split("=")[1]
        ckpts = ", ".join(str(out / f"seed{seed}" / f / "best.ckpt") for f in folds)
        assert [a for a in cmd if a.startswith("--model.init_args.teachers.")] == [
            f"--model.init_args.teachers.teacher=[{ckpts}]"]


def test_the_unlabelled_rows_read_their_own_file_and_the_control_its_rgb_teacher(tmp_path, monkeypatch):
    """The semi-supervised rows distil from the teacher (the control from the RGB-only teacher,
    trained with seed + 100) of their seed; with another world (``--data.path``) they are left
    out, like the ceiling: their file is of the default world."""
    from kd_detect.lab import compare

    monkeypatch.chdir(tmp_path)  # no data/ here: nothing for check_data to refuse
    rows = [compare.UNLABELLED, compare.RGB_UNLABELLED, compare.LOGIT_UNLABELLED, compare.RGB_LOGIT_UNLABELLED,
            compare.LOGIT_ONLY_UNLABELLED, *compare.RECIPE_WITHOUT, *compare.BASELINES_UNLABELLED,
            compare.RECIPE_PLUS_FITNETS, compare.RECIPE_DECOMPOSED]
    assert set(rows) == set(compare.UNLABELLED_ROWS)
    assert "data/synthetic_unlabelled.h5" in compare.DATA_FILES
    commands = _fake_fits(monkeypatch)
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(tmp_path / "c"),
                         "--only", *rows]) == 0
    by_config: dict[str, list[list[str]]] = {}
    for c in commands:
        by_config.setdefault(c[c.index("--config") + 1], []).append(c)
    for row in rows:
        assert len(by_config[f"experiments/{row}.yaml"]) == 2
    for row, teacher in [(compare.RGB_UNLABELLED, compare.RGB_TEACHER), (compare.RGB_LOGIT_UNLABELLED, compare.RGB_TEACHER),
                         (compare.UNLABELLED, compare.TEACHER), (compare.LOGIT_UNLABELLED, compare.TEACHER),
                         (compare.LOGIT_ONLY_UNLABELLED, compare.TEACHER),
                         *((row, compare.TEACHER) for row in (*compare.RECIPE_WITHOUT, *compare.BASELINES_UNLABELLED,
                                                              compare.RECIPE_PLUS_FITNETS, compare.RECIPE_DECOMPOSED))]:
        for c in by_config[f"experiments/{row}.yaml"]:
            seed = next(a for a in c if a.startswith("--seed_everything=")).split("=")[1]
            want = tmp_path / "c" / f"seed{seed}" / teacher / "best.ckpt"
            assert [a for a in c if a.startswith("--model.init_args.teachers.")] == [
                f"--model.init_args.teachers.teacher={want}"], (row, c)
    assert sorted(next(a for a in c if a.startswith("--seed_everything="))
                  for c in by_config[f"experiments/{compare.RGB_TEACHER}.yaml"]) == [
        "--seed_everything=100", "--seed_everything=101"]
    commands.clear()
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(tmp_path / "d"),
                         "--only", *rows, "--", "--data.path=x.h5"]) == 0
    assert not any(c[c.index("--config") + 1] in {f"experiments/{r}.yaml" for r in rows} for c in commands)
    # ... unless that world's unlabelled file is given: then they read it, every other run the world's file
    commands.clear()
    assert compare.main(["--seeds", "2", "--ablation-seeds", "2", "--jobs", "1", "--out", str(tmp_path / "e"),
                         "--unlabelled-data", "xu.h5", "--only", *rows, "--", "--data.path=x.h5"]) == 0
    for c in commands:
        paths = [a for a in c if a.startswith("--data.path=")]
        own = c[c.index("--config") + 1] in {f"experiments/{r}.yaml" for r in rows}
        assert paths == (["--data.path=x.h5", "--data.path=xu.h5"] if own else ["--data.path=x.h5"]), c
    assert sum(c[c.index("--config") + 1] in {f"experiments/{r}.yaml" for r in rows} for c in commands) == 2 * len(rows)
    assert "--unlabelled-data xu.h5" in (tmp_path / "e" / "report.md").read_text()


def test_another_worlds_ceiling_and_probe_read_their_own_files_or_are_left_out(tmp_path, monkeypatch):
    """With ``--data.path`` (another world) the RGB ceiling would read that world's 1x file and
    be no ceiling at all, and the probe would read the default world's file: both are left out.
    ``--ceiling-data`` gives that world's 4x file, which the ceiling alone reads (after the
    world's path: the last one wins), every other run the world's file; ``--probe-file`` the
    probe's. The report's command repeats the options."""
    from kd_detect.lab import compare

    monkeypatch.chdir(tmp_path)
    commands = _fake_fits(monkeypatch)
    probes = []
    monkeypatch.setattr(compare, "run_probe", lambda root, path: probes.append((root, path)))

    def configs():
        return [c[c.index("--config") + 1] for c in commands]

    assert compare.main(["--seeds", "2", "--jobs", "1", "--out", str(tmp_path / "a"), "--only", OURS, PROBE,
                         "--", "--data.path=x.h5"]) == 0
    assert f"experiments/{CEILING}.yaml" not in configs() and probes == []
    assert sorted(set(configs())) == sorted(f"experiments/{e}.yaml" for e in (RGB, TEACHER, OURS))
    commands.clear()
    assert compare.main(["--seeds", "2", "--jobs", "1", "--out", str(tmp_path / "b"), "--ceiling-data", "xc.h5",
                         "--probe-file", "x.h5", "--only", OURS, PROBE, "--", "--data.path=x.h5"]) == 0
    assert configs().count(f"experiments/{CEILING}.yaml") == 2
    assert probes == [(tmp_path / "b", "x.h5")]
    for c in commands:
        paths = [a for a in c if a.startswith("--data.path=")]
        ceiling = c[c.index("--config") + 1] == f"experiments/{CEILING}.yaml"
        assert paths == (["--data.path=x.h5", "--data.path=xc.h5"] if ceiling else ["--data.path=x.h5"]), c
    report = (tmp_path / "b" / "report.md").read_text()
    assert "--ceiling-data xc.h5" in report and "--probe-file x.h5" in report
    probes.clear()  # the default world: the default file
    assert compare.main(["--seeds", "1", "--jobs", "1", "--out", str(tmp_path / "c"), "--only", PROBE]) == 0
    assert probes == [(tmp_path / "c", compare.PROBE_FILE)]


def test_first_seed_adds_seeds_to_a_comparison_and_the_report_reads_them_all(tmp_path, monkeypatch):
    """``--first-seed 2 --seeds 2 --ablation-seeds 1`` trains RGB-only, the teacher and ours on
    seeds 2 and 3 and an ablation (with its RGB-only teacher, seed + 100) on seed 2 only, in
    directories ``seed2``/``seed3``, and the report pairs the runs of every seed found, those of
    an earlier invocation (seeds 0 and 1) included."""
    import json
    from pathlib import Path

    from kd_detect.lab import compare

    out = tmp_path / "c"
    commands = _fake_fits(monkeypatch)
    assert compare.main(["--seeds", "2", "--jobs", "1", "--out", str(out), "--only", compare.OURS,
                         "--", "--data.path=x.h5"]) == 0
    commands.clear()
    student = "ablations/synthetic_kd_rgb_teacher"
    assert compare.main(["--first-seed", "2", "--seeds", "2", "--ablation-seeds", "1", "--jobs", "1",
                         "--out", str(out), "--only", compare.OURS, student, "--", "--data.path=x.h5"]) == 0
    ran: dict[str, list[tuple[str, str]]] = {}
    for c in commands:
        root = next(a for a in c if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1]
        seed = next(a for a in c if a.startswith("--seed_everything=")).split("=")[1]
        ran.setdefault(c[c.index("--config") + 1], []).append((Path(root).relative_to(out).parts[0], seed))
    for exp in (compare.RGB, compare.TEACHER, compare.OURS):
        assert sorted(ran[f"experiments/{exp}.yaml"]) == [("seed2", "2"), ("seed3", "3")]
    assert ran[f"experiments/{student}.yaml"] == [("seed2", "2")]
    assert ran[f"experiments/{compare.RGB_TEACHER}.yaml"] == [("seed2", "102")]
    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == [0, 1, 2, 3] and report["seeds_run"] == [2, 3]
    rows = {r["experiment"]: r for r in report["rows"]}
    assert rows[compare.OURS]["runs"] == 4 and rows[student]["runs"] == 1
    assert "--first-seed 2" in (out / "report.md").read_text()
    assert "every seed found under its output directory: 0, 1, 2, 3" in (out / "report.md").read_text()
    before = len(commands)
    with pytest.raises(SystemExit):  # refused before anything is checked or run
        compare.main(["--first-seed", "-1", "--out", str(out), "--", "--data.path=x.h5"])
    assert len(commands) == before


def test_the_taught_probe_row_reads_its_seeds_teacher_and_is_paired_like_a_run(tmp_path, make_synthetic_h5):
    """``probe_taught`` of seed s: the RGB probe fit to the labels and to seed s's teacher's
    probabilities on the unlabelled videos (``probe --teacher``, the same figure), stored as
    that seed's run (test figure, and the validation figure as its selection), paired with
    RGB-only by seed, and not recomputed once stored."""
    import json

    import pytorch_lightning as pl
    import torch

    from kd_detect.data.format import FeatureFile
    from kd_detect.lab import compare
    from kd_detect.lab.probe import probe, teacher_targets
    from kd_detect.modules import TeacherModule, instantiate

    path = make_synthetic_h5(extra_training=24, extra_subset="unlabelled")
    ff = FeatureFile(path)
    classes, dims = list(ff.classes), {m: ff.read(ff.video_ids[0], [m])[m].shape[1] for m in ("rgb", "flow")}
    ff.close()
    ckpts = []
    for seed in (0, 1):  # two untrained teachers: different probabilities, so different rows
        torch.manual_seed(seed)
        teacher = instantiate(TeacherModule, head={"class_path": "kd_detect.models.heads.PDAN",
                                                   "init_args": {"hidden": 8, "num_layers": 1}},
                              modalities=["rgb", "flow"], num_classes=len(classes), classes=classes, modality_dims=dims)
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.strategy.connect(teacher)
        ckpts.append(tmp_path / f"teacher{seed}.ckpt")
        trainer.save_checkpoint(ckpts[-1])
        (tmp_path / f"seed{seed}" / RGB).mkdir(parents=True)
        (tmp_path / f"seed{seed}" / RGB / "metrics.json").write_text(json.dumps({compare.METRIC: 0.3}))
    got = [compare.run_probe_taught(tmp_path, s, ckpts[s], str(path)) for s in (0, 1)]
    for s in (0, 1):
        want = probe(path, ["rgb"], context=2, extra_subset="unlabelled", extra_targets=teacher_targets(ckpts[s], path))
        assert got[s] == pytest.approx(want.test_map, abs=1e-12)
        stored = json.loads((tmp_path / f"seed{s}" / compare.PROBE_TAUGHT / "metrics.json").read_text())
        assert stored["selection"] == {"monitor": compare.SELECTION, "score": pytest.approx(want.val_map)}
        assert stored["teacher"] == str(ckpts[s]) and stored["unlabelled_videos"] == 24
    assert got[0] != got[1]
    results, validation = compare.collect(tmp_path), compare.collect(tmp_path, validation=True)
    assert results[compare.PROBE_TAUGHT] == {0: pytest.approx(got[0]), 1: pytest.approx(got[1])}
    assert set(validation[compare.PROBE_TAUGHT]) == {0, 1}
    row = next(r for r in summarise(results) if r["experiment"] == compare.PROBE_TAUGHT)
    assert row["group"] == "reference" and row["paired"]["mean"] == pytest.approx((got[0] + got[1]) / 2 - 0.3)
    assert compare.run_probe_taught(tmp_path, 0, tmp_path / "gone.ckpt", "missing.h5") == pytest.approx(got[0])


def test_compare_computes_the_taught_probe_from_each_seeds_teacher_on_the_unlabelled_file(tmp_path, monkeypatch):
    """``--only probe_taught``: the teachers are trained, then the row is computed per seed from
    that seed's teacher checkpoint on data/synthetic_unlabelled.h5; for another world it reads
    ``--unlabelled-data``, and without it the row is left out (its file is the default world's)."""
    from kd_detect.lab import compare

    monkeypatch.chdir(tmp_path)
    commands = _fake_fits(monkeypatch)
    calls = []
    monkeypatch.setattr(compare, "run_probe_taught", lambda root, s, ckpt, path: calls.append((root, s, ckpt, path)))
    out = tmp_path / "c"
    assert compare.main(["--seeds", "2", "--jobs", "1", "--out", str(out), "--only", compare.PROBE_TAUGHT]) == 0
    assert calls == [(out, s, out / f"seed{s}" / TEACHER / "best.ckpt", compare.UNLABELLED_FILE) for s in (0, 1)]
    assert {c[c.index("--config") + 1] for c in commands} == {f"experiments/{e}.yaml" for e in (RGB, TEACHER, CEILING)}
    calls.clear()
    assert compare.main(["--seeds", "1", "--jobs", "1", "--out", str(tmp_path / "d"), "--only", compare.PROBE_TAUGHT,
                         "--", "--data.path=x.h5"]) == 0
    assert calls == []
    assert compare.main(["--seeds", "1", "--jobs", "1", "--out", str(tmp_path / "e"), "--unlabelled-data", "xu.h5",
                         "--only", compare.PROBE_TAUGHT, "--", "--data.path=x.h5"]) == 0
    assert calls == [(tmp_path / "e", 0, tmp_path / "e" / "seed0" / TEACHER / "best.ckpt", "xu.h5")]


def test_a_run_trained_in_another_order_of_the_videos_stops_the_comparison(tmp_path, monkeypatch):
    """A finished run of seed 3 that recorded data.seed 0 (every run before 2026-12-07) was
    trained in another order than seed 3 now gets: one line naming it, not a silent mix;
    with ``-- --data.seed=0`` (the old order for every run) it is reused."""
    import json

    import yaml

    from kd_detect.errors import UsageError
    from kd_detect.lab import compare

    out = tmp_path / "seed3" / RGB
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({compare.METRIC: 0.5}))
    (out / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 3, "data": {"seed": 0}}))
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("nothing should train"))
    with pytest.raises(UsageError, match=rf"^{out}: its training videos came in the order of seed 0 \(data.seed\), "
                                         r"now that of seed 3 \(data.seed follows seed_everything\): delete the run "
                                         r"to retrain it, or add `-- --data.seed=0`"):
        compare.fit(RGB, 3, tmp_path, [], tmp_path / "log")
    assert compare.fit(RGB, 3, tmp_path, ["--data.seed=0"], tmp_path / "log") == {compare.METRIC: 0.5}
    with pytest.raises(UsageError, match=r"now that of seed 5: delete"):  # an explicit order, the last one given
        compare.fit(RGB, 3, tmp_path, ["--data.seed=0", "--data.seed=5"], tmp_path / "log")
    (out / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 3, "data": {"seed": None}}))
    assert compare.fit(RGB, 3, tmp_path, [], tmp_path / "log") == {compare.METRIC: 0.5}  # today's record


def test_seeds_added_beside_runs_of_another_order_stop_before_any_fit(tmp_path, monkeypatch, capsys):
    """``--first-seed 5`` would not reuse seed 3's run, but the report reads it: an old-order
    run anywhere under --out stops the comparison before anything trains."""
    import json

    import yaml

    from kd_detect.lab import compare

    old = tmp_path / "seed3" / RGB
    old.mkdir(parents=True)
    (old / "metrics.json").write_text(json.dumps({compare.METRIC: 0.5}))
    (old / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 3, "data": {"seed": 0}}))
    monkeypatch.setattr(compare, "check_data", lambda: None)
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("nothing should train"))
    assert compare.main(["--first-seed", "5", "--seeds", "1", "--out", str(tmp_path), "--only", RGB]) == 1
    assert capsys.readouterr().err.startswith(f"error: {old}: its training videos came in the order of seed 0")


def test_gap_closed_uses_the_seeds_the_row_shares_with_the_references():
    # seeds 0-3 of the references, seeds 2-3 of an ablation: on its seeds RGB-only averages
    # 0.50 and the teacher 0.70, so +0.05 over RGB-only is a quarter of the lead there; the
    # references' means over all four seeds (RGB 0.55, teacher 0.70) would make it (0.55 - 0.55) / 0.15 = 0
    results = {RGB: {0: 0.60, 1: 0.60, 2: 0.50, 3: 0.50}, TEACHER: {0: 0.70, 1: 0.70, 2: 0.70, 3: 0.70},
               "ablations/synthetic_without_atomic": {2: 0.55, 3: 0.55},
               "ablations/synthetic_without_global": {7: 0.99}}  # no seed in common: nothing to say
    rows = {r["experiment"]: r for r in summarise(results)}
    assert rows["ablations/synthetic_without_atomic"]["gap_closed"] == pytest.approx(0.25)
    assert rows["ablations/synthetic_without_atomic"]["gap_closed_ceiling"] is None  # no ceiling runs
    assert rows["ablations/synthetic_without_global"]["gap_closed"] is None
