"""The experiment configs and the CLI: every YAML parses, every synthetic one runs a fast
dev run, overrides reach the modules, the synthetic detectors really learn, runs resume
exactly, and ``make train``'s helpers find what an experiment needs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from kd_detect.apps.lightning import KDCLI, lightning_main
from kd_detect.cli import main
from kd_detect.config import load_config
from kd_detect.lab.runner import dependencies, expected_config, teacher_args

ROOT = Path(__file__).resolve().parents[1]
FRAGMENTS = {"base.yaml", "kd_losses.yaml", "unlabelled.yaml"}  # included by experiments, not run on their own
EXPERIMENTS = sorted(
    p for p in (ROOT / "experiments").rglob("*.yaml") if "sweeps" not in p.parts and p.name not in FRAGMENTS
)
SYNTHETIC = [p for p in EXPERIMENTS if p.stem.startswith("synthetic")]
TINY = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
    "--trainer.callbacks=[]",
    "--model.init_args.head.init_args.hidden=16",
    "--model.init_args.head.init_args.num_layers=2",
]

os.environ["WANDB_MODE"] = "disabled"


class ParseOnly(KDCLI):
    """Parses (and so type-checks) a full config without instantiating anything."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT / "experiments"))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, synthetic_h5) -> dict[str, Path]:
    """A tiny rgb+flow+pose teacher checkpoint (and its cache) on the tiny synthetic file:
    compatible with every synthetic student experiment."""
    root = tmp_path_factory.mktemp("teacher")
    lightning_main(
        ["fit", "--config", str(ROOT / "experiments/synthetic_teacher.yaml"), f"--data.path={synthetic_h5}",
         f"--trainer.default_root_dir={root}", "--trainer.max_epochs=1", *TINY[:2],
         "--model.init_args.head.init_args.hidden=16", "--model.init_args.head.init_args.num_layers=2",
         "--trainer.callbacks=[{class_path: kd_detect.callbacks.RunCheckpoint}]", "--trainer.logger=false"]
    )
    ckpt = root / "best.ckpt"
    cache = root / "teacher_cache.h5"
    assert main(["cache-teacher", "--ckpt", str(ckpt), "--data", str(synthetic_h5), "--out", str(cache)]) == 0
    # two fold teachers (the fold experiments' recipe, 2 folds on the tiny file) for the
    # cross-fitted students, which refuse a teacher that saw every training video
    folds = []
    for k in range(2):
        fold_root = root / f"fold{k}"
        lightning_main(
            ["fit", "--config", str(ROOT / f"experiments/folds/synthetic_teacher_fold{k}.yaml"),
             f"--data.path={synthetic_h5}", "--data.folds=2", f"--trainer.default_root_dir={fold_root}",
             "--trainer.max_epochs=1", *TINY[:2], "--model.init_args.head.init_args.hidden=16",
             "--model.init_args.head.init_args.num_layers=2",
             "--trainer.callbacks=[{class_path: kd_detect.callbacks.RunCheckpoint}]", "--trainer.logger=false"]
        )
        folds.append(fold_root / "best.ckpt")
    return {"ckpt": ckpt, "cache": cache, "folds": folds}


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=_rel)
def test_every_experiment_parses(exp, tmp_path):
    cfg = load_config(exp)
    assert cfg["model"]["class_path"].startswith("kd_detect.modules."), exp
    cli = lightning_main(["--config", str(exp), "--data.path=unused.h5"], run=False, cli_class=ParseOnly)
    model = cli.config.model
    if model.class_path.endswith("StudentModule"):
        assert model.init_args.teachers, f"{exp}: a student experiment must name its teachers"
        assert model.init_args.distill is not None or "student" in exp.stem
    names = dependencies(_rel(exp)[: -len(".yaml")], [])
    assert names[0].startswith("data/") and names[0].endswith(".h5")


@pytest.mark.parametrize("exp", sorted((ROOT / "experiments").glob("*_kd.yaml")), ids=_rel)
def test_the_unlabelled_recipe_adds_to_every_kd_experiment(exp):
    """``--config <dataset>_kd.yaml --config unlabelled.yaml``: the experiment's losses, teachers
    and data stay; the unlabelled subset and logit KD are added."""
    recipe = ROOT / "experiments/unlabelled.yaml"
    cli = lightning_main(["--config", str(exp), "--config", str(recipe), "--data.path=unused.h5"],
                         run=False, cli_class=ParseOnly)
    alone = lightning_main(["--config", str(exp), "--data.path=unused.h5"], run=False, cli_class=ParseOnly)
    got, want = cli.config.model.init_args, alone.config.model.init_args
    assert sorted(got.distill) == sorted({*want.distill, "logit_kd"}), exp
    assert got.distill["logit_kd"]["init_args"]["weight"] == "auto"
    assert got.teachers == want.teachers and cli.config.data.modalities == alone.config.data.modalities
    assert cli.config.data.unlabelled_subset == "unlabelled" and not alone.config.data.unlabelled_subset


def _teacher_overrides(exp: Path, tiny_teacher: dict[str, Path]) -> list[str]:
    model = load_config(exp)["model"].get("init_args", {})
    args = [f"--model.init_args.teachers.{name}=" + (f"[{', '.join(map(str, tiny_teacher['folds']))}]"
                                                       if isinstance(spec, list) else str(tiny_teacher["ckpt"]))
            for name, spec in (model.get("teachers") or {}).items()]
    args += [f"--model.init_args.teacher_caches.{name}={tiny_teacher['cache']}" for name in model.get("teacher_caches") or {}]
    return args


@pytest.mark.parametrize("exp", SYNTHETIC, ids=_rel)
def test_every_synthetic_experiment_fast_dev_run(exp, synthetic_h5, make_synthetic_h5, tiny_teacher, tmp_path):
    data = synthetic_h5
    if (load_config(exp).get("data") or {}).get("unlabelled_subset"):  # the tiny world + unannotated videos
        data = make_synthetic_h5(extra_training=6, extra_subset="unlabelled")
    cli = lightning_main(
        ["fit", "--config", str(exp), f"--data.path={data}", f"--trainer.default_root_dir={tmp_path}",
         "--trainer.fast_dev_run=2", *TINY, *_teacher_overrides(exp, tiny_teacher)]
    )
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    model = cli.model
    if isinstance((load_config(exp)["model"].get("init_args", {}).get("teachers") or {}).get("teacher"), list):
        assert type(model.teachers["teacher"]).__name__ == "CrossFittedTeacher", exp
    if hasattr(model, "distill"):
        active = model.active_plugins()
        logged = {k for k in cli.trainer.callback_metrics if k.startswith("train/distill/")}
        expected = {f"train/distill/{p}" if len(model.distill) == 1 else f"train/distill/{t}/{p}"
                    for t, plugins in active.items() for p in plugins}
        assert logged == expected, exp  # every active plugin ran; zero-weight ones did not
        assert expected or exp.stem.startswith("synthetic_student"), exp  # students on labels alone


def test_cli_overrides_reach_nested_modules(synthetic_h5, tiny_teacher, tmp_path):
    cli = lightning_main(
        ["--config", str(ROOT / "experiments/synthetic_kd.yaml"), f"--data.path={synthetic_h5}",
         *TINY, *_teacher_overrides(ROOT / "experiments/synthetic_kd.yaml", tiny_teacher),
         "--model.init_args.head.init_args.num_layers=3",
         "--model.init_args.distill.global.init_args.weight=0.25",
         "--model.init_args.distill.global.init_args.mode=gram",
         "--model.init_args.distill.atomic.init_args.window=2"],
        run=False,
    )
    model = cli.model
    assert len(model.head.blocks) == 3
    plugins = model.distill["teacher"]
    assert plugins["global"].weight == 0.25 and not plugins["global"].auto and plugins["global"].mode == "gram"
    # untouched: the experiment's values (weight: auto, same-video negatives)
    assert plugins["atomic"].window == 2 and plugins["boundary"].weight_repr == "auto"
    assert plugins["atomic"].weight_repr == "auto" and plugins["atomic"].negatives == "video"
    # the data's classes and dims were linked into the model
    assert model.num_classes == cli.datamodule.num_classes and model.modality_dims["rgb"] == cli.datamodule.modality_dims["rgb"]


@pytest.mark.parametrize("between", [[], ["--trainer.default_root_dir=runs/x", "--test_after_fit=true"]],
                         ids=["consecutive", "make-train-order"])
def test_a_second_config_file_adds_losses_to_the_experiments(synthetic_h5, tiny_teacher, tmp_path, between):
    """``--config experiment.yaml [overrides] --config extra.yaml``: the extra file's
    distillation loss joins the experiment's three (merged like an include), where
    jsonargparse alone would replace them. ``make train EXP=x ARGS="--config extra.yaml"``
    writes its own overrides between the two files."""
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    distill:\n      logit_kd:\n"
                     "        class_path: kd_detect.distill.LogitKD\n        init_args: {weight: 0.5}\n")
    exp = ROOT / "experiments/synthetic_kd.yaml"
    cli = lightning_main(["--config", str(exp), *between, "--config", str(extra), f"--data.path={synthetic_h5}", *TINY,
                          *_teacher_overrides(exp, tiny_teacher)], run=False)
    plugins = cli.model.distill["teacher"]
    assert sorted(plugins) == ["atomic", "boundary", "global", "logit_kd"]
    assert plugins["logit_kd"].weight == 0.5 and plugins["global"].weight_repr == "auto"


def test_missing_data_file_stops_with_the_command_that_creates_it(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "experiments/charades_rgb.yaml"),
              f"--data.path={tmp_path}/charades.h5", "--trainer.logger=false"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "charades.h5" in err and "make data DATASET=charades" in err
    assert "Traceback" not in err


def test_runner_finds_data_and_teachers():
    assert dependencies("synthetic_kd", []) == ["data/synthetic.h5", "runs/synthetic_teacher/best.ckpt"]
    assert dependencies("synthetic_kd_two_teachers", ["--data.path=x.h5"]) == [
        "x.h5", "runs/synthetic_teacher_flow/best.ckpt", "runs/synthetic_teacher_pose/best.ckpt"]
    assert dependencies("synthetic_rgb", []) == ["data/synthetic.h5"]
    # a cross-fitted teacher is a list: every fold teacher is a dependency, in fold order
    folds = [f"runs/folds/synthetic_teacher_fold{k}/best.ckpt" for k in range(4)]
    assert dependencies("ablations/synthetic_kd_cross_fitted", []) == ["data/synthetic.h5", *folds]
    assert dependencies("ablations/synthetic_kd_cross_fitted", ["--model.init_args.teachers.teacher=[a.ckpt,b.ckpt]"]) == [
        "data/synthetic.h5", "a.ckpt", "b.ckpt"]
    # a cached student needs its cache too, so `make train EXP=synthetic_kd_cached` builds it
    assert dependencies("synthetic_kd_cached", []) == [
        "data/synthetic.h5", "runs/synthetic_teacher/best.ckpt", "runs/synthetic_teacher/teacher_cache.h5"]
    assert dependencies("synthetic_kd_cached", ["--model.init_args.teacher_caches.teacher=c.h5"])[-1] == "c.h5"
    # a config file in ARGS counts as well: the unlabelled recipe on the synthetic world needs
    # the file with the unlabelled videos, which the Makefile then builds
    recipe = ["--config experiments/unlabelled.yaml --data.path=data/synthetic_unlabelled.h5"]
    assert dependencies("synthetic_kd", recipe) == ["data/synthetic_unlabelled.h5", "runs/synthetic_teacher/best.ckpt"]
    assert expected_config("synthetic_kd", recipe)["data"]["unlabelled_subset"] == "unlabelled"
    assert "config" not in expected_config("synthetic_kd", recipe)
    # a student-only override must not reach the teacher's training
    assert teacher_args(["--data.path=x.h5 --model.init_args.distill.atomic.init_args.weight=2 --trainer.max_epochs 3"]) == (
        "--data.path=x.h5 --trainer.max_epochs 3")


def _fit(exp: str, data: Path, root: Path, *extra: str) -> dict:
    lightning_main(
        ["fit", "--config", str(ROOT / f"experiments/{exp}.yaml"), f"--data.path={data}",
         f"--trainer.default_root_dir={root}", "--test_after_fit=true", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.logger=false", *extra]
    )
    return json.loads((root / "metrics.json").read_text())


def test_synthetic_detectors_learn_well_above_chance(make_synthetic_h5, tmp_path):
    """Short CPU runs of the RGB-only baseline and the teacher on a small synthetic file:
    test frame mAP far above the chance level (the mean positive prevalence)."""
    import h5py
    import numpy as np

    # v1: its gap shows in 15 short epochs on 64 tiny videos; v2's modest gap does not (RGB 0.64 vs
    # teacher 0.58 here, with exact labels), it is measured at full size (data_prep/synthetic.py)
    data = make_synthetic_h5(videos=64, preset="v1")
    with h5py.File(data) as h5:
        labels = [g["labels"][()] for g in h5["videos"].values() if g.attrs["subset"] == "testing"]
    prevalence = np.concatenate(labels).mean(0)
    chance = float(prevalence[prevalence > 0].mean())
    small = ["--trainer.max_epochs=15", "--model.init_args.head.init_args.hidden=32", "--model.init_args.lr=3e-3"]
    rgb = _fit("synthetic_rgb", data, tmp_path / "rgb", *small)
    teacher = _fit("synthetic_teacher", data, tmp_path / "teacher", *small)
    assert rgb["test/frame_map"] > chance + 0.25, (rgb, chance)
    assert teacher["test/frame_map"] > chance + 0.25, (teacher, chance)
    assert teacher["test/frame_map"] > rgb["test/frame_map"], (teacher, rgb)
    for run in ("rgb", "teacher"):
        files = {p.name for p in (tmp_path / run).iterdir()}
        assert {"best.ckpt", "last.ckpt", "config.yaml", "metrics.json", "charades_submission.txt"} <= files
    # metrics.json records the validation figure the tested (best) checkpoint was chosen on
    import torch

    ckpt = torch.load(tmp_path / "rgb" / "best.ckpt", map_location="cpu", weights_only=False)
    saved = next(v for k, v in ckpt["callbacks"].items() if k.startswith("RunCheckpoint"))
    assert rgb["selection"]["monitor"] == "val/frame_map" and rgb["selection"]["mode"] == "max"
    assert rgb["selection"]["score"] == pytest.approx(float(saved["best_model_score"]))
    assert 0.0 < rgb["selection"]["score"] <= 1.0
    sub = (tmp_path / "rgb" / "charades_submission.txt").read_text().splitlines()
    assert len(sub) == 25 * len(labels) and len(sub[0].split()) == 2 + len(prevalence)


def test_resume_continues_exactly(synthetic_h5, tmp_path):
    """A run stopped after 2 epochs and resumed from last.ckpt to 4 epochs ends with the same
    weights as an uninterrupted 4-epoch run (seeded, deterministic CPU kernels)."""
    common = [
        "--config", str(ROOT / "experiments/synthetic_rgb.yaml"), f"--data.path={synthetic_h5}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
        "--trainer.deterministic=true", "--model.init_args.head.init_args.hidden=16",
        "--model.init_args.head.init_args.num_layers=2", "--data.max_steps=32", "--seed_everything=3",
        "--trainer.callbacks=[{class_path: kd_detect.callbacks.RunCheckpoint}, {class_path: kd_detect.callbacks.EpochSeed}]",
    ]
    lightning_main(["fit", *common, f"--trainer.default_root_dir={tmp_path / 'full'}", "--trainer.max_epochs=4"])
    lightning_main(["fit", *common, f"--trainer.default_root_dir={tmp_path / 'cut'}", "--trainer.max_epochs=2"])
    lightning_main(["fit", *common, f"--trainer.default_root_dir={tmp_path / 'cut'}", "--trainer.max_epochs=4",
                    f"--ckpt_path={tmp_path / 'cut' / 'last.ckpt'}"])
    full = torch.load(tmp_path / "full" / "last.ckpt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=False)
    assert full["epoch"] == cut["epoch"] == 3  # last.ckpt is the latest epoch, improved or not
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(cut["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from kd_detect.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_mid_write(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tmp_path):
    """Lightning refreshes last.ckpt only when best.ckpt improves; ours after every epoch."""
    import pytorch_lightning as pl

    from kd_detect.callbacks import RunCheckpoint

    class Flat(pl.LightningModule):  # val/frame_map never improves after epoch 0
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, idx):
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch, idx):
            self.log("val/frame_map", 0.5 - 0.1 * self.current_epoch)  # best at epoch 0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)
    trainer = pl.Trainer(max_epochs=3, callbacks=[RunCheckpoint()], default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Flat(), loader, loader)
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 0
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2


@pytest.mark.parametrize("name, schedule", [
    ("synthetic_kd_stop_half", {"class_path": "kd_detect.callbacks.StopDistillation", "init_args": {"fraction": 0.5}}),
    ("synthetic_kd_decay", {"class_path": "kd_detect.callbacks.DistillationDecay", "init_args": {"fraction": 1.0}}),
])
def test_the_scheduled_distillation_ablations_keep_every_base_callback(name, schedule):
    """Callbacks are a list (replaced, not merged): each schedule ablation repeats base.yaml's
    and adds its schedule, so a callback added to base.yaml later must be added there too."""
    base = load_config(ROOT / "experiments/base.yaml")["trainer"]["callbacks"]
    callbacks = load_config(ROOT / f"experiments/ablations/{name}.yaml")["trainer"]["callbacks"]
    assert callbacks[:-1] == base
    assert callbacks[-1] == schedule


def test_a_schedule_can_be_added_from_the_command_line():
    base = load_config(ROOT / "experiments/base.yaml")["trainer"]["callbacks"]
    # the command-line form docs/method.md gives adds the same callback to any experiment
    cli = lightning_main(["--config", str(ROOT / "experiments/synthetic_kd.yaml"), "--data.path=unused.h5",
                          "--trainer.callbacks+=kd_detect.callbacks.StopDistillation",
                          "--trainer.callbacks.fraction=0.5"], run=False, cli_class=ParseOnly)
    added = cli.config.trainer.callbacks[-1]
    assert added.class_path == "kd_detect.callbacks.StopDistillation" and added.init_args.fraction == 0.5
    assert [c.class_path for c in cli.config.trainer.callbacks[:-1]] == [c["class_path"] for c in base]
    # a schedule without arguments: the decay over the whole run
    cli = lightning_main(["--config", str(ROOT / "experiments/synthetic_kd.yaml"), "--data.path=unused.h5",
                          "--trainer.callbacks+=kd_detect.callbacks.DistillationDecay"], run=False, cli_class=ParseOnly)
    added = cli.config.trainer.callbacks[-1]
    assert added.class_path == "kd_detect.callbacks.DistillationDecay" and added.init_args.fraction == 1.0
