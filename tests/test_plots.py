"""Pictures: the knowledge plots reproduce the losses' quantities; ``kd-detect plot`` on a run tree."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from kd_detect.apps.plot import main
from kd_detect.data.format import FeatureFile, VideoRecord, write_feature_file
from kd_detect.distill import BoundarySaliency, GlobalContextualRelation
from kd_detect.models.heads.base import HeadOutput
from kd_detect.modules import DetectorModule, StudentModule, TeacherModule, instantiate
from kd_detect.plots import boundary_saliency, compare_bar_chart, log_to_wandb, plot_ap_gain, relation_matrix
from kd_detect.plots.runs import choose_video
from kd_detect.runs import RunDir

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = ["pour water", "cut bread", "wipe table", "take pills"]
DIMS = {"rgb": 8, "flow": 4}
HEAD = {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 16, "num_layers": 2}}


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_saliency_and_relations_are_the_losses_quantities():
    g = torch.Generator().manual_seed(0)
    s, f = torch.randn(6, 15, generator=g), torch.randn(9, 15, generator=g)
    # b_t by hand: L1 distance of consecutive unit vectors / sqrt(F), undefined at t = 0
    b, defined = boundary_saliency(s)
    unit = s / s.norm(dim=0, keepdim=True)
    by_hand = (unit[:, 1:] - unit[:, :-1]).abs().sum(0) / math.sqrt(6)
    assert not defined[0] and defined[1:].all()
    np.testing.assert_allclose(b[1:], by_hand.numpy(), rtol=1e-5)
    # the boundary loss is KL(softmax(b_F/τ) || softmax(b_S/τ)) of exactly these curves
    tau_b = 0.1
    bs, bf = b[1:], boundary_saliency(f)[0][1:]
    ps, pf = torch.softmax(torch.tensor(bs) / tau_b, 0), torch.softmax(torch.tensor(bf) / tau_b, 0)
    kl = float((pf * (pf.log() - ps.log())).sum())
    mask = torch.ones(1, 15, dtype=torch.bool)
    plugin = BoundarySaliency(tau_b=tau_b)
    plugin.setup(6, 9, 3)
    loss = plugin(HeadOutput(s[None], torch.zeros(1, 3, 15)), HeadOutput(f[None], torch.zeros(1, 3, 15)), mask)
    assert loss.item() == pytest.approx(kl, rel=1e-4)
    # the global loss is the mean row KL(R_F[i] || R_S[i]) of the matrices drawn
    rs, rf = relation_matrix(s, 0.1), relation_matrix(f, 0.1)
    np.testing.assert_allclose(rs.sum(1), 1.0, rtol=1e-5)
    kl_rows = float(np.mean(np.sum(rf * (np.log(rf) - np.log(rs)), axis=1)))
    glob = GlobalContextualRelation(tau_r=0.1)
    glob.setup(6, 9, 3)
    loss = glob(HeadOutput(s[None], torch.zeros(1, 3, 15)), HeadOutput(f[None], torch.zeros(1, 3, 15)), mask)
    assert loss.item() == pytest.approx(kl_rows, rel=1e-3)


def test_compare_bar_chart_and_ap_gain(tmp_path):
    rows = [{"name": "synthetic_rgb", "mean": 0.41, "std": 0.02}, {"name": "synthetic_kd", "mean": 0.47, "std": 0.01},
            {"name": "synthetic_teacher", "mean": 0.55, "std": 0.0}]
    out = compare_bar_chart(rows, tmp_path / "sub" / "compare.png")
    assert is_png(out)
    with pytest.raises(ValueError, match="no rows"):
        compare_bar_chart([], tmp_path / "x.png")
    ap_kd = np.array([0.5, np.nan, 0.2, 0.9])
    ap_rgb = np.array([0.4, np.nan, 0.3, 0.9])
    assert is_png(plot_ap_gain(CLASSES, ap_kd, ap_rgb, tmp_path / "gain.png"))
    with pytest.raises(ValueError, match="no class"):
        plot_ap_gain(CLASSES, np.full(4, np.nan), np.full(4, np.nan), tmp_path / "none.png")


def test_log_to_wandb_only_with_an_active_run(tmp_path, monkeypatch):
    logged = []
    fake = types.SimpleNamespace(run=None, log=logged.append, Image=lambda p: ("image", p))
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    assert log_to_wandb([tmp_path / "timeline.png"]) is False and logged == []
    fake.run = object()
    assert log_to_wandb([tmp_path / "timeline.png"]) is True
    assert logged == [{"plots/timeline": ("image", str(tmp_path / "timeline.png"))}]


# ------------------------------------------------------------------------ a run tree
def save(module, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/{tiny_rgb, tiny_teacher, tiny_kd} as `make train` leaves them (untrained weights)."""
    root = tmp_path_factory.mktemp("plots")
    rng = np.random.default_rng(0)
    videos = []
    for i in range(6):
        T = 20 + 3 * i
        segs = np.array([[c % 4, 2.0 + c, 8.0 + 2 * c] for c in range(1 + i % 3)])
        feats = {m: rng.standard_normal((T, d)).astype(np.float32) for m, d in DIMS.items()}
        videos.append(VideoRecord(f"vid{i}", "training" if i < 2 else "testing", float(T), feats, segs))
    data = write_feature_file(root / "data.h5", CLASSES, list(DIMS), videos, dtype="float32")
    common = {"head": HEAD, "num_classes": 4, "classes": CLASSES, "modality_dims": DIMS}
    torch.manual_seed(0)
    teacher_ckpt = root / "runs" / "tiny_teacher" / "best.ckpt"
    save(instantiate(TeacherModule, modalities=["rgb", "flow"], **common), teacher_ckpt)
    save(instantiate(DetectorModule, modalities=["rgb"], **common), root / "runs" / "tiny_rgb" / "best.ckpt")
    distill = {"boundary": {"class_path": "kd_detect.distill.BoundarySaliency", "init_args": {"strides": [1, 2]}},
               "global": {"class_path": "kd_detect.distill.GlobalContextualRelation"}}
    student = instantiate(StudentModule, modalities=["rgb"], teachers={"teacher": str(teacher_ckpt)},
                          distill=distill, **common)
    kd = root / "runs" / "tiny_kd"
    save(student, kd / "best.ckpt")
    config = {"model": {"class_path": "kd_detect.modules.StudentModule",
                        "init_args": {"teachers": {"teacher": str(teacher_ckpt)}}},
              "data": {"path": str(data), "test_subset": "testing"}}
    (kd / "config.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "kd": kd, "data": data}


def test_plot_command_draws_every_picture(runs, capsys):
    assert RunDir(runs["kd"]).rgb_sibling().path == runs["kd"].parent / "tiny_rgb"
    assert main([str(runs["kd"])]) == 0
    out = capsys.readouterr().out
    plots = runs["kd"] / "plots"
    for name in ("timeline.png", "knowledge.png", "ap_gain.png"):
        assert is_png(plots / name) and str(plots / name) in out


def test_default_video_has_most_segments(runs):
    ff = FeatureFile(runs["data"])
    ids = ff.videos_in("testing")
    counts = {v: len(ff.segments(v)) for v in ids}
    assert counts == {"vid2": 3, "vid3": 1, "vid4": 2, "vid5": 3}
    assert choose_video(ff, ids) == "vid2"  # most segments, first in file order on a tie
    assert choose_video(ff, ["vid3", "vid4", "vid5", "vid2"]) == "vid5"


def test_missing_rgb_run_skips_its_pictures_with_a_note(runs, tmp_path, capsys):
    lonely = tmp_path / "alone_kd"
    lonely.mkdir()
    for name in ("best.ckpt", "config.yaml"):
        (lonely / name).write_bytes((runs["kd"] / name).read_bytes())
    assert main([str(lonely), "--video", "vid3"]) == 0
    captured = capsys.readouterr()
    assert "no RGB-only run found" in captured.err
    assert is_png(lonely / "plots" / "timeline.png") and not (lonely / "plots" / "ap_gain.png").exists()


def test_bad_run_inputs_are_one_line(runs, tmp_path, capsys):
    def fails(argv) -> str:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("kd-detect plot: error: ")
        return err

    assert "run directory not found" in fails([str(tmp_path / "nope")])
    (tmp_path / "empty_run").mkdir()
    assert "no best.ckpt or last.ckpt" in fails([str(tmp_path / "empty_run")])
    assert "'vid0' is not in subset 'testing'" in fails([str(runs["kd"]), "--video", "vid0"])
