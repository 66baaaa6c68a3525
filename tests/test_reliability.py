"""Issue 16: training refuses, before it starts, what `kd-detect check` refuses (one line
naming the file, the video and the field; cached verdict), and ``val_subset: auto``."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl

from kd_detect.data.datamodule import FeatureDataModule, fixed_share
from kd_detect.data.format import FeatureFile
from kd_detect.data.verdict import cached_problems, verdict_cache_dir
from kd_detect.errors import DataValidationError
from kd_detect.io import content_hash, file_identity

ROOT = Path(__file__).resolve().parents[1]


def _ids(path: Path, subset: str) -> list[str]:
    return FeatureFile(path).videos_in(subset)


def _replace(h5: h5py.File, name: str, data: np.ndarray) -> None:
    del h5[name]
    h5.create_dataset(name, data=data)


# each case: (mutation of a copy of the tiny file, regex of the one line: file, video, field)
def _dup_classes(h5, train, test):
    names = [c.decode() if isinstance(c, bytes) else str(c) for c in h5.attrs["classes"]]
    h5.attrs["classes"] = [names[0]] + names[:-1]
    return r"root: attr 'classes' has duplicate names"


def _non_binary(h5, train, test):
    lab = h5[f"videos/{train}/labels"][()]
    lab[0, 0] = 2
    _replace(h5, f"videos/{train}/labels", lab)
    return rf"video '{train}': field 'labels' has 1 values other than 0/1"


def _backwards_segment(h5, train, test):
    seg = h5[f"videos/{train}/segments"][()]
    seg[0, 1], seg[0, 2] = seg[0, 2] + 1.0, seg[0, 1]
    _replace(h5, f"videos/{train}/segments", seg)
    return rf"video '{train}': field 'segments' has 1 rows with start > end"


def _class_out_of_range(h5, train, test):
    seg = h5[f"videos/{train}/segments"][()]
    seg[0, 0] = 6
    _replace(h5, f"videos/{train}/segments", seg)
    return rf"video '{train}': field 'segments' has 1 rows with a class id out of range"


def _class_nan(h5, train, test):
    seg = h5[f"videos/{train}/segments"][()]
    seg[0, 0] = np.nan
    _replace(h5, f"videos/{train}/segments", seg)
    return rf"video '{train}': field 'segments' has non-finite values"


def _float64(h5, train, test):
    _replace(h5, f"videos/{train}/rgb", h5[f"videos/{train}/rgb"][()].astype(np.float64))
    return rf"video '{train}': modality 'rgb' has dtype float64.*float64 is refused everywhere"


def _zero_length(h5, train, test):
    for name in ("rgb", "flow", "pose", "labels"):
        data = h5[f"videos/{train}/{name}"][()]
        _replace(h5, f"videos/{train}/{name}", data[:0])
    _replace(h5, f"videos/{train}/segments", np.zeros((0, 3)))
    return rf"video '{train}': zero-length video"


def _nan_features(h5, train, test):
    rgb = h5[f"videos/{train}/rgb"][()]
    rgb[3, 1] = np.nan
    _replace(h5, f"videos/{train}/rgb", rgb)
    return rf"video '{train}': modality 'rgb' has 1 non-finite values \(NaN/inf\), first at step 3"


def _labels_short(h5, train, test):
    _replace(h5, f"videos/{train}/labels", h5[f"videos/{train}/labels"][()][:, :-1])
    return rf"video '{train}': field 'labels' has shape \(\d+, 5\), expected \(\d+, 6\)"


def _rgb_short(h5, train, test):
    """Before: the labels were blamed ('labels' has shape (T, C), expected (T - 3, C))."""
    _replace(h5, f"videos/{train}/rgb", h5[f"videos/{train}/rgb"][()][:-3])
    t = h5[f"videos/{train}/labels"].shape[0]
    return (rf"video '{train}': modality 'rgb' has T={t - 3} but field 'labels' and modalities "
            rf"\['flow', 'pose'\] have T={t} \(every modality and the labels share T\)")


def _bad_test_labels(h5, train, test):
    lab = h5[f"videos/{test}/labels"][()]
    lab[:, 0] = 7
    _replace(h5, f"videos/{test}/labels", lab)
    return rf"video '{test}': field 'labels' has \d+ values other than 0/1"


CASES = [_dup_classes, _non_binary, _backwards_segment, _class_out_of_range, _class_nan, _float64,
         _zero_length, _nan_features, _labels_short, _rgb_short, _bad_test_labels]


def _broken(synthetic_h5: Path, tmp_path: Path, case) -> tuple[Path, str]:
    path = tmp_path / "broken.h5"
    shutil.copyfile(synthetic_h5, path)
    train, test = _ids(path, "training")[0], _ids(path, "testing")[0]
    with h5py.File(path, "a") as h5:
        pattern = case(h5, train, test)
    return path, pattern


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.strip("_"))
def test_datamodule_refuses_what_check_refuses(case, synthetic_h5, tmp_path):
    path, pattern = _broken(synthetic_h5, tmp_path, case)
    with pytest.raises(DataValidationError) as info:
        FeatureDataModule(str(path))
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert re.search(pattern, line), line
    assert f"kd-detect check {path}" in line and "--data.validate=false" in line


def test_validate_false_opts_out(synthetic_h5, tmp_path):
    path, _ = _broken(synthetic_h5, tmp_path, _non_binary)
    dm = FeatureDataModule(str(path), validate=False)  # trusted file: no check, no error
    assert dm.num_classes == 6


def test_fit_refuses_before_training_in_one_line(synthetic_h5, tmp_path):
    """The command line: exit status 1, one stderr line naming file, video and field, no run."""
    path, pattern = _broken(synthetic_h5, tmp_path, _bad_test_labels)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kd_detect.cli", "fit", "--config", str(ROOT / "experiments/synthetic_teacher.yaml"),
         f"--data.path={path}", f"--trainer.default_root_dir={run}", "--trainer.logger=false",
         "--trainer.max_epochs=1"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(pattern, errors[0]) and str(path) in errors[0], errors[0]
    assert not list(run.rglob("*.ckpt"))  # refused before any training
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_verdict_is_cached_per_file_identity(synthetic_h5, tmp_path, monkeypatch):
    monkeypatch.setenv("KD_DETECT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "data" / "ok.h5"
    path.parent.mkdir()
    shutil.copyfile(synthetic_h5, path)
    assert cached_problems(path) == ([], 0, False)  # first run validates
    assert cached_problems(path) == ([], 0, True)   # second run: from the cache
    assert cached_problems(path, require_labels=False)[2] is False  # other rules, other verdict
    assert sorted(os.listdir(path.parent)) == ["ok.h5"]  # nothing written beside the data
    # a changed file (same size, new content) is validated again and found broken
    with h5py.File(path, "a") as h5:
        vid = _ids(path, "training")[0]
        lab = h5[f"videos/{vid}/labels"]
        lab[0, 0] = 3
    first, count, cached = cached_problems(path)
    assert cached is False and count >= 1 and "values other than 0/1" in first[0]
    with pytest.raises(DataValidationError):
        FeatureDataModule(str(path))


def test_unwritable_cache_and_read_only_data_dir(synthetic_h5, tmp_path, monkeypatch):
    if os.geteuid() == 0:
        # root writes anyway: point the cache at a path below a file (never creatable)
        blocker = tmp_path / "blocker"
        blocker.write_text("x")
        monkeypatch.setenv("KD_DETECT_CACHE_DIR", str(blocker / "cache"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        monkeypatch.setenv("KD_DETECT_CACHE_DIR", str(ro))
    assert verdict_cache_dir() != synthetic_h5.parent
    assert cached_problems(synthetic_h5)[:2] == ([], 0)
    assert cached_problems(synthetic_h5)[2] is False  # not cached, validated again, no error


def test_file_identity(tmp_path):
    small = tmp_path / "a.bin"
    small.write_bytes(b"abc")
    expect = hashlib.sha256(b"3" + b"abc").hexdigest()
    assert content_hash(small) == expect
    big = tmp_path / "b.bin"
    blob = bytes(range(256)) * (3 * 4096 + 7)  # > 2 MiB
    big.write_bytes(blob)
    mib = 1 << 20
    assert content_hash(big) == hashlib.sha256(str(len(blob)).encode() + blob[:mib] + blob[-mib:]).hexdigest()
    ident = file_identity(big)
    assert ident["size"] == len(blob) and ident["mtime_ns"] == os.stat(big).st_mtime_ns


# ---------------------------------------------------------------- val_subset: auto
def test_val_auto_uses_validation_when_present(synthetic_h5, capsys):
    dm = FeatureDataModule(str(synthetic_h5))
    val = _ids(synthetic_h5, "validation")
    assert val and dm.val_subset == "validation"
    assert list(dm.dataset("val").video_ids) == sorted(val, key=lambda v: -FeatureFile(synthetic_h5).lengths[v])
    assert "val_subset=auto -> the file's 'validation' subset" in capsys.readouterr().err


def test_val_auto_holds_out_a_hashed_share_of_training(synthetic_h5, tmp_path, capsys):
    path = tmp_path / "noval.h5"
    shutil.copyfile(synthetic_h5, path)
    with h5py.File(path, "a") as h5:
        for group in h5["videos"].values():
            if group.attrs["subset"] == "validation":
                group.attrs["subset"] = "training"
    train = _ids(path, "training")
    dm = FeatureDataModule(str(path))
    assert "val_subset" not in capsys.readouterr().err  # said only when validation data are built
    # the 15 % whose SHA-1 of the id ranks lowest, by hand
    count = -(-15 * len(train) // 100)
    ranked = sorted(train, key=lambda v: hashlib.sha1(v.encode()).hexdigest())[:count]
    assert sorted(dm.dataset("val").video_ids) == sorted(ranked) == sorted(fixed_share(train, 0.15))
    assert sorted(dm.dataset("train").video_ids) == sorted(set(train) - set(ranked))  # held out of training
    err = capsys.readouterr().err
    assert err.count("val_subset=auto") == 1 and f"validating on {count} of {len(train)}" in err
    explicit = FeatureDataModule(str(path), val_subset="testing")
    assert sorted(explicit.dataset("val").video_ids) == sorted(_ids(path, "testing"))


# ---------------------------------------------------------------- SIGTERM during fit
FIT_TINY = [
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
    "--model.init_args.head.init_args.hidden=16", "--model.init_args.head.init_args.num_layers=2",
]


def test_sigterm_error_after_fit(tmp_path):
    """The after-fit check alone: no SIGTERM, nothing; with one, one line naming last.ckpt."""
    from types import SimpleNamespace

    from kd_detect.apps.lightning import sigterm_error
    from kd_detect.errors import TrainingInterrupted

    cb = SimpleNamespace(last_model_path="", dirpath=str(tmp_path))
    trainer = SimpleNamespace(received_sigterm=False, checkpoint_callbacks=[cb], current_epoch=3, global_step=40,
                              default_root_dir=str(tmp_path))
    assert sigterm_error(trainer) is None
    trainer.received_sigterm = True
    err = sigterm_error(trainer)
    assert isinstance(err, TrainingInterrupted) and "before any checkpoint was written" in str(err)
    (tmp_path / "last.ckpt").write_bytes(b"x")
    msg = str(sigterm_error(trainer))
    last = str(tmp_path / "last.ckpt")
    assert "\n" not in msg and "after 3 completed epoch(s), step 40" in msg
    assert f"the last checkpoint is {last}" in msg and f"--ckpt_path={last}" in msg and "RESUME=1" in msg


def test_fit_stopped_by_sigterm_raises_in_process(synthetic_h5, tmp_path):
    """A real SIGTERM at the end of the first epoch (a callback sends it to this process):
    Lightning stops with its SystemExit(0); the CLI turns it into TrainingInterrupted."""

    from kd_detect.apps.lightning import lightning_main
    from kd_detect.errors import TrainingInterrupted

    os.environ["WANDB_MODE"] = "disabled"
    with pytest.raises(TrainingInterrupted) as info:
        lightning_main(
            ["fit", "--config", str(ROOT / "experiments/synthetic_rgb.yaml"), f"--data.path={synthetic_h5}",
             f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=5", *FIT_TINY,
             "--trainer.callbacks+=tests.test_reliability.TermAfterFirstEpoch"]
        )
    msg = str(info.value)
    assert "after 1 completed epoch(s)" in msg and f"the last checkpoint is {tmp_path / 'last.ckpt'}" in msg, msg
    assert (tmp_path / "last.ckpt").is_file()


class TermAfterFirstEpoch(pl.Callback):
    """Sends SIGTERM to this process once the first training epoch is done."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import signal

        if trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_fit_killed_with_sigterm_exits_nonzero(synthetic_h5, tmp_path):
    """The command line, killed from outside after its first checkpoint: exit 1, one line
    (about 6 s on 2 shared cores, so not marked slow)."""
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kd_detect.cli", "fit", "--config", str(ROOT / "experiments/synthetic_rgb.yaml"),
         f"--data.path={synthetic_h5}", f"--trainer.default_root_dir={run}", "--trainer.max_epochs=500", *FIT_TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
    )
    deadline = time.monotonic() + 240
    while not (run / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "fit stopped by SIGTERM" in errors[0], err[-2000:]
    assert f"--ckpt_path={run / 'last.ckpt'}" in errors[0] and "Traceback" not in err
