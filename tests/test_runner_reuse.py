"""Issue 16: ``make train`` never reuses a run silently. A fit records its data file's
identity (``run.json``) next to its resolved ``config.yaml``; ``kd_detect.lab.runner``
compares both with what an experiment would train, retrains a teacher that does not
match (one line why), and stops on an unfinished teacher run or an old synthetic file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from kd_detect.apps.lightning import write_run_record
from kd_detect.lab import runner
from kd_detect.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--data.path=data/tiny.h5", "--trainer.max_epochs=1"]


@pytest.fixture
def sandbox(tmp_path, monkeypatch, synthetic_h5) -> Path:
    """A project folder: experiments/ (the repo's), data/tiny.h5, runs/."""
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    (tmp_path / "data").mkdir()
    shutil.copy(synthetic_h5, tmp_path / "data" / "tiny.h5")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_run(exp: str, args: list[str], *, finished: bool = True, **changes) -> RunDir:
    """A run whose config.yaml is exactly what ``exp`` + ``args`` asks (plus ``changes``,
    dotted keys), trained on data/tiny.h5 as it is now."""
    cfg = runner.expected_config(exp, args)
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    run = RunDir(Path("runs") / exp)
    run.path.mkdir(parents=True)
    (run.path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run.path / "best.ckpt").write_bytes(b"ckpt")
    write_run_record(run.path, "data/tiny.h5")
    if finished:
        (run.path / "metrics.json").write_text("{}")
    return run


def test_a_matching_teacher_is_reused(sandbox):
    fake_run("synthetic_teacher", TINY_ARGS)
    assert runner.stale_teachers("synthetic_kd", TINY_ARGS) == []


def test_a_teacher_of_another_config_is_retrained_with_one_line(sandbox, capsys):
    fake_run("synthetic_teacher", TINY_ARGS)
    # the student asks for the experiment's 50 epochs: the 1-epoch teacher does not match
    assert runner.stale_teachers("synthetic_kd", ["--data.path=data/tiny.h5"]) == ["synthetic_teacher"]
    assert capsys.readouterr().err == (
        "runs/synthetic_teacher: does not match experiments/synthetic_teacher.yaml for synthetic_kd "
        "(trainer.max_epochs was 1 in the run, is 50 now); retraining it\n")


def test_fold_teachers_in_a_folder_of_runs_are_checked_like_any_teacher(sandbox, capsys):
    """``runs/folds/<fold teacher>``: a cross-fitted student's fold teachers are reused when
    they match and retrained (one line each) when not, like a teacher directly under runs/."""
    student = "ablations/synthetic_kd_cross_fitted"
    fake_run("folds/synthetic_teacher_fold0", TINY_ARGS)
    fake_run("folds/synthetic_teacher_fold1", TINY_ARGS, **{"data.fold": 3})
    assert runner.stale_teachers(student, TINY_ARGS) == ["folds/synthetic_teacher_fold1"]
    assert capsys.readouterr().err == (
        f"runs/folds/synthetic_teacher_fold1: does not match experiments/folds/synthetic_teacher_fold1.yaml for "
        f"{student} (data.fold was 3 in the run, is 1 now); retraining it\n")


def test_a_teacher_of_another_data_file_is_retrained(sandbox, capsys, make_synthetic_h5):
    fake_run("synthetic_teacher", TINY_ARGS)
    shutil.copy(make_synthetic_h5(seed=1), "data/other.h5")
    args = ["--data.path=data/other.h5", "--trainer.max_epochs=1"]
    assert runner.stale_teachers("synthetic_kd", args) == ["synthetic_teacher"]
    assert "data.path was 'data/tiny.h5' in the run, is 'data/other.h5' now" in capsys.readouterr().err
    # same path, other content (regenerated with another seed): caught by run.json
    shutil.copy(make_synthetic_h5(seed=1), "data/tiny.h5")
    assert runner.stale_teachers("synthetic_kd", TINY_ARGS) == ["synthetic_teacher"]
    assert "data/tiny.h5 changed since the run was trained on it" in capsys.readouterr().err


def test_same_content_rewritten_is_still_the_same_data(sandbox, synthetic_h5):
    fake_run("synthetic_teacher", TINY_ARGS)
    os.utime("data/tiny.h5", ns=(1, 1))  # a new mtime, the same bytes (the generator is deterministic)
    assert runner.stale_teachers("synthetic_kd", TINY_ARGS) == []


def test_an_unfinished_teacher_run_stops_with_one_line(sandbox):
    fake_run("synthetic_teacher", TINY_ARGS, finished=False)
    with pytest.raises(runner.UsageError, match=r"^runs/synthetic_teacher: its last fit did not finish .* "
                                                r"`make train EXP=synthetic_teacher RESUME=1`"):
        runner.stale_teachers("synthetic_kd", TINY_ARGS)
    assert runner.main(["stale", "synthetic_kd", *TINY_ARGS]) == 1


def test_current_says_why_a_run_is_retrained(sandbox, capsys):
    assert runner.main(["current", "synthetic_rgb", *TINY_ARGS]) == 1
    assert capsys.readouterr().err == "runs/synthetic_rgb: no finished run (metrics.json) yet; training it\n"
    fake_run("synthetic_rgb", TINY_ARGS, **{"model.init_args.lr": 0.01})
    assert runner.main(["current", "synthetic_rgb", *TINY_ARGS]) == 1
    assert "model.init_args.lr was 0.01 in the run, is 0.001 now" in capsys.readouterr().err
    shutil.rmtree("runs/synthetic_rgb")
    fake_run("synthetic_rgb", TINY_ARGS, **{"trainer.logger": False, "data.num_workers": 2})  # no effect on learning
    assert runner.main(["current", "synthetic_rgb", *TINY_ARGS]) == 0


def test_a_run_trained_in_another_order_of_the_videos_is_retrained(sandbox, capsys):
    """Runs before 2026-12-07 recorded data.seed 0 whatever their seed_everything; the
    experiments never set data.seed, so only the order check tells such a run apart."""
    args = [*TINY_ARGS, "--seed_everything=3"]
    fake_run("synthetic_rgb", args, **{"data.seed": 0})
    assert runner.main(["current", "synthetic_rgb", *args]) == 1
    assert capsys.readouterr().err == (
        "runs/synthetic_rgb: does not match experiments/synthetic_rgb.yaml (its training videos came in the order "
        "of seed 0 (data.seed), now that of seed 3 (data.seed follows seed_everything)); training it\n")
    shutil.rmtree("runs/synthetic_rgb")
    fake_run("synthetic_rgb", args, **{"data.seed": None})  # today's record: follows seed_everything 3
    assert runner.main(["current", "synthetic_rgb", *args]) == 0
    shutil.rmtree("runs/synthetic_rgb")
    fake_run("synthetic_rgb", TINY_ARGS, **{"data.seed": 0})  # seed 0 either way: the same order
    assert runner.main(["current", "synthetic_rgb", *TINY_ARGS]) == 0
    assert runner.main(["current", "synthetic_rgb", *TINY_ARGS, "--data.seed=0"]) == 0


@pytest.mark.parametrize("options, why", [
    ({"preset": "v1"}, "it was generated with --preset v1 --seed 0 --videos 16"),
    ({"strip": True}, "it is the v1 world (generated before benchmark v2)"),
    ({"preset": "v2", "revision": 1},
     "it is revision 1 of the v2 world (an earlier calibration; today's is 2, README, Results)"),
])
def test_an_old_or_custom_synthetic_file_stops_with_one_line(sandbox, options, why, capsys):
    import h5py

    from data_prep.synthetic import generate

    generate("data/synthetic.h5", preset=options.get("preset", "v1"), **({} if "revision" in options else {"videos": 16}))
    if "revision" in options:  # a file of an earlier calibration of the default world
        with h5py.File("data/synthetic.h5", "r+") as h5:
            h5.attrs["generator_revision"] = options["revision"]
    if options.get("strip"):  # a file of the generator before it recorded its options
        with h5py.File("data/synthetic.h5", "r+") as h5:
            del h5.attrs["generator_preset"], h5.attrs["generator_options"]
    before = Path("data/synthetic.h5").read_bytes()
    assert runner.main(["stale", "synthetic_rgb"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: data/synthetic.h5 is not the synthetic benchmark the experiments expect: {why}. "
                   "Regenerate it with `make data` (or keep it under another name and pass ARGS=--data.path=FILE)\n")
    assert Path("data/synthetic.h5").read_bytes() == before


def test_the_default_synthetic_file_passes(sandbox):
    from data_prep.synthetic import generate

    generate("data/synthetic.h5", videos=4)  # the recipe's file, only smaller: an option
    assert "--videos 4" in runner.synthetic_difference(Path("data/synthetic.h5"))
    generate("data/synthetic.h5")  # the recipe: default preset, seed and options
    assert runner.synthetic_difference(Path("data/synthetic.h5")) is None


def test_a_real_fit_records_what_the_runner_compares(sandbox, monkeypatch):
    """The recorded config.yaml (Lightning's resolved one) and run.json of a real 1-epoch fit."""
    from kd_detect.cli import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = [*TINY_ARGS, "--trainer.logger=false"]
    main(["fit", "--config", "experiments/synthetic_rgb.yaml", "--trainer.default_root_dir=runs/synthetic_rgb",
          "--test_after_fit=true", *args])
    record = json.loads(Path("runs/synthetic_rgb/run.json").read_text())
    assert record["data"]["path"] == "data/tiny.h5" and record["data"]["size"] == Path("data/tiny.h5").stat().st_size
    assert runner.current("synthetic_rgb", args) is None
    assert "trainer.max_epochs was 1 in the run, is 2 now" in runner.current("synthetic_rgb", [*args, "--trainer.max_epochs=2"])


def test_a_run_without_run_json_is_reused_with_one_line(sandbox, capsys):
    run = fake_run("synthetic_teacher", TINY_ARGS)
    (run.path / "run.json").unlink()  # a run trained before runs recorded their data
    assert runner.stale_teachers("synthetic_kd", TINY_ARGS) == []
    assert capsys.readouterr().err == ("runs/synthetic_teacher: no run.json (trained before runs recorded their "
                                       "data): reused on its config.yaml alone; delete runs/synthetic_teacher to "
                                       "retrain it\n")


def test_the_runner_expects_the_generators_revision():
    from data_prep.synthetic import REVISION

    assert runner.SYNTHETIC_REVISION == REVISION


def test_what_the_student_reads_does_not_reach_its_teacher(sandbox):
    """``data.unlabelled_subset`` and ``data.modalities`` say what the student reads: passed on,
    the teacher would refuse the unlabelled videos (so `make train` could never train it) or
    read the student's modalities, and a matching teacher would look stale."""
    student = [*TINY_ARGS, "--data.unlabelled_subset=unlabelled", "--data.modalities", "[rgb, flow, pose]"]
    assert runner.teacher_args(student) == "--data.path=data/tiny.h5 --trainer.max_epochs=1"
    fake_run("synthetic_teacher", TINY_ARGS)
    assert runner.stale_teachers("synthetic_kd", student) == []


def test_a_config_file_in_args_moves_the_teacher_to_its_data_file(sandbox, capsys):
    """A ``--config`` file in ARGS that sets ``data.path`` moves the student and its teacher
    to that file, like ``--data.path`` does; before, the teacher was trained on its own file
    and then judged stale against the student's, and so retrained on every `make train`."""
    Path("mine.yaml").write_text("data:\n  path: data/tiny.h5\n  unlabelled_subset: unlabelled\n  train_fraction: 0.5\n")
    student = ["--config mine.yaml", "--trainer.max_epochs=1"]
    t_args = runner.teacher_args(student)
    assert t_args == "--data.path=data/tiny.h5 --data.train_fraction=0.5 --trainer.max_epochs=1"
    assert runner.dependencies("synthetic_kd", student)[0] == "data/tiny.h5"
    fake_run("synthetic_teacher", t_args.split())  # what `make train` trains the teacher with
    assert runner.stale_teachers("synthetic_kd", student) == []
    assert capsys.readouterr().err == ""
    # an explicit override still wins over the file
    assert runner.teacher_args([*student, "--data.train_fraction=1.0"]).endswith("--data.train_fraction=1.0")


def test_a_teacher_is_reused_for_its_file_plus_unlabelled_videos(sandbox, capsys):
    """A student on ``data_prep.add_unlabelled``'s copy of the teacher's file (the same
    videos bit for bit, plus unlabelled ones) reuses the teacher, even when the original
    file changed later; a copy of another file, or another config, still retrains it."""
    import numpy as np

    from data_prep.add_unlabelled import add_unlabelled
    from kd_detect.data.format import UNLABELLED, FeatureFile, FeatureFileWriter, VideoRecord

    tiny = FeatureFile("data/tiny.h5")
    with FeatureFileWriter("data/extra.h5", tiny.classes, tiny.modalities, labelled=False) as writer:
        feats = {m: np.zeros((6, d), np.float16) for m, d in tiny.modality_dims.items()}
        writer.add(VideoRecord("new_video", UNLABELLED, 3.0, feats))
    fake_run("synthetic_teacher", TINY_ARGS)
    add_unlabelled(Path("data/tiny.h5"), [Path("data/extra.h5")], Path("data/plus.h5"))
    student = ["--config experiments/unlabelled.yaml --data.path=data/plus.h5", "--trainer.max_epochs=1"]
    assert runner.stale_teachers("synthetic_kd", student) == []
    assert capsys.readouterr().err == (
        "runs/synthetic_teacher: reused: data/plus.h5 is the file it trained on, data/tiny.h5, with unlabelled "
        "videos added (data_prep.add_unlabelled)\n")
    # a student experiment naming the copy, its teacher's experiment the original: the same
    Path("experiments/synthetic_teacher.yaml").write_text(
        Path("experiments/synthetic_teacher.yaml").read_text() + "\ndata:\n  path: data/tiny.h5\n")
    Path("experiments/plus_kd.yaml").write_text("config: synthetic_kd.yaml\ndata:\n  path: data/plus.h5\n")
    assert runner.stale_teachers("plus_kd", ["--trainer.max_epochs=1"]) == []
    capsys.readouterr()
    # the copy keeps the videos the teacher trained on, even after the original changes
    shutil.copy("data/plus.h5", "data/tiny.h5")
    assert runner.stale_teachers("synthetic_kd", student) == []
    # another config still retrains it
    capsys.readouterr()
    assert runner.stale_teachers("synthetic_kd", student[:1]) == ["synthetic_teacher"]
    assert "trainer.max_epochs was 1 in the run, is 50 now" in capsys.readouterr().err
    # a copy of another file (here: of the copy) is another file
    add_unlabelled(Path("data/plus.h5"), [Path("data/extra.h5")], Path("data/plus2.h5"), prefix="again_")
    assert runner.stale_teachers("synthetic_kd", [student[0].replace("plus.h5", "plus2.h5"), student[1]]) == [
        "synthetic_teacher"]


def test_a_cache_of_another_data_file_is_rebuilt(sandbox, capsys):
    """A reused teacher keeps its checkpoint, so nothing else would rebuild a cache computed
    from its own file when the student reads the file plus unlabelled videos."""
    import h5py

    from kd_detect.io import content_hash

    fake_run("synthetic_teacher", TINY_ARGS)
    cache = Path("runs/synthetic_teacher/teacher_cache.h5")
    with h5py.File(cache, "w") as h5:
        h5.attrs["source_file"], h5.attrs["source_sha256"] = "data/tiny.h5", content_hash("data/tiny.h5")
    assert runner.stale_caches("synthetic_kd_cached", TINY_ARGS) == []
    shutil.copy("data/tiny.h5", "data/other.h5")  # the same content under another name: the same
    assert runner.stale_caches("synthetic_kd_cached", ["--data.path=data/other.h5"]) == []
    with h5py.File("data/other.h5", "r+") as h5:
        h5.attrs["note"] = "changed"
    assert runner.main(["stale-caches", "synthetic_kd_cached", "--data.path=data/other.h5"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(cache)]
    assert err == (f"{cache}: computed from data/tiny.h5, but synthetic_kd_cached reads data/other.h5; "
                   "rebuilding it\n")
    # a cache the user named is the student's to check (it says how to rebuild it)
    named = ["--data.path=data/other.h5", f"--model.init_args.teacher_caches.teacher={shutil.copy(cache, 'mine.h5')}"]
    assert runner.stale_caches("synthetic_kd_cached", named) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_train_computes_a_teacher_cache_from_the_file_the_student_reads(sandbox):
    """A student experiment naming another file than its teacher's (here the teacher's file
    plus unlabelled videos) gets its cache computed from that file, when the cache is
    missing and when it was computed from the teacher's file; the commands ``make train``
    runs are recorded by a stand-in ``kd-detect``."""
    import subprocess
    import sys

    import h5py
    import numpy as np

    from data_prep.add_unlabelled import add_unlabelled
    from kd_detect.data.format import UNLABELLED, FeatureFile, FeatureFileWriter, VideoRecord
    from kd_detect.io import content_hash

    tiny = FeatureFile("data/tiny.h5")
    with FeatureFileWriter("data/extra.h5", tiny.classes, tiny.modalities, labelled=False) as writer:
        writer.add(VideoRecord("new_video", UNLABELLED, 3.0,
                               {m: np.zeros((6, d), np.float16) for m, d in tiny.modality_dims.items()}))
    add_unlabelled(Path("data/tiny.h5"), [Path("data/extra.h5")], Path("data/plus.h5"))
    Path("experiments/synthetic_teacher.yaml").write_text(
        Path("experiments/synthetic_teacher.yaml").read_text() + "\ndata:\n  path: data/tiny.h5\n")
    Path("experiments/plus_kd_cached.yaml").write_text("config: synthetic_kd_cached.yaml\ndata:\n  path: data/plus.h5\n")
    fake_run("synthetic_teacher", TINY_ARGS)
    shutil.copy(ROOT / "Makefile", "Makefile")
    venv = Path("venv/bin")
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT / "src"}:{ROOT}" exec "{sys.executable}" "$@"\n')
    (venv / "kd-detect").write_text('#!/bin/sh\necho "$@" >> kd.log\n')
    for tool in venv.iterdir():
        tool.chmod(0o755)
    Path("venv/.installed").touch()

    def make_train() -> tuple[list[str], str]:
        Path("kd.log").unlink(missing_ok=True)
        proc = subprocess.run(
            ["make", "--no-print-directory", "-s", "-o", "venv/.installed", "VENV=venv", "train",
             "EXP=plus_kd_cached", "ARGS=--trainer.max_epochs=1"],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return Path("kd.log").read_text().splitlines(), proc.stderr

    cache = "runs/synthetic_teacher/teacher_cache.h5"
    calls, _ = make_train()
    assert calls[0] == f"cache-teacher --ckpt runs/synthetic_teacher/best.ckpt --out {cache} --data data/plus.h5"
    assert calls[1].startswith("fit --config experiments/plus_kd_cached.yaml ") and len(calls) == 2
    # a cache computed from the teacher's own file is rebuilt from the student's
    with h5py.File(cache, "w") as h5:
        h5.attrs["source_file"], h5.attrs["source_sha256"] = "data/tiny.h5", content_hash("data/tiny.h5")
    calls, err = make_train()
    assert f"{cache}: computed from data/tiny.h5, but plus_kd_cached reads data/plus.h5; rebuilding it" in err
    assert calls[0] == f"cache-teacher --ckpt runs/synthetic_teacher/best.ckpt --out {cache} --data data/plus.h5"
    # on its own, a teacher's cache is computed from the teacher's file
    Path("kd.log").unlink()
    subprocess.run(["make", "-s", "-o", "venv/.installed", "VENV=venv", "-W", "runs/synthetic_teacher/best.ckpt",
                    cache], check=True, capture_output=True, timeout=60)
    assert Path("kd.log").read_text().split()[-1] == "data/tiny.h5"
