"""The detectors' input recipe: training-set standardisation and channel input dropout
(``models/inputs.py``, ``data/statistics.py``), measured at fit start, kept in checkpoints
and exports."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from kd_detect.apps.export import main as export_main
from kd_detect.data import FeatureDataModule
from kd_detect.data.format import FeatureFile
from kd_detect.data.statistics import feature_moments
from kd_detect.models.inputs import Standardize, input_dropout, modality_dropout
from kd_detect.modules import DetectorModule, TeacherModule, instantiate, load_detector
from kd_detect.modules.deploy import load_state, state_path
from tests.helpers import TINY_HEAD


def test_feature_moments_match_numpy_over_the_steps_of_the_chosen_videos(synthetic_h5):
    ff = FeatureFile(synthetic_h5)
    ids = ff.videos_in("training")[:5]
    stats = feature_moments(ff, ids, ["rgb", "pose"])
    for m in ("rgb", "pose"):
        allsteps = np.concatenate([ff.read(v, [m])[m].astype(np.float64) for v in ids])
        np.testing.assert_allclose(stats[m][0], allsteps.mean(0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(stats[m][1], np.maximum(allsteps.std(0), 1e-6), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="at least one video"):
        feature_moments(ff, [], ["rgb"])


def test_feature_moments_floor_a_constant_dimension(tmp_path):
    from kd_detect.data.format import VideoRecord, write_feature_file

    videos = [VideoRecord(f"v{i}", "training", 4.0, {"rgb": np.full((4, 2), 3.0, np.float32)},
                          np.zeros((0, 3)), np.zeros((4, 1), np.uint8)) for i in range(2)]
    path = write_feature_file(tmp_path / "c.h5", ["a"], ["rgb"], videos, dtype="float32")
    mean, std = feature_moments(FeatureFile(path), ["v0", "v1"], ["rgb"])["rgb"]
    assert mean.tolist() == [3.0, 3.0] and std.tolist() == [1e-6, 1e-6]


def test_standardize_by_hand_and_padding_stays_zero():
    s = Standardize(2)
    with pytest.raises(RuntimeError, match="statistics not set"):
        s(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="shape"):
        s.set_statistics([0.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        s.set_statistics([0.0, 0.0], [1.0, 0.0])
    s.set_statistics([1.0, -2.0], [2.0, 0.5])
    x = torch.tensor([[[3.0, 5.0, 0.0], [-2.0, -1.0, 0.0]]])  # (1, D=2, T=3), last step padding
    mask = torch.tensor([[True, True, False]])
    expected = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 2.0, 0.0]]])
    torch.testing.assert_close(s(x, mask), expected)
    # unmasked, the padded step is shifted like any other (the caller masks later)
    assert s(x)[0, :, 2].tolist() == [-0.5, 4.0]


def test_input_dropout_drops_whole_dimensions_of_a_video_and_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.rand(64, 32, 10) + 1.0  # never 0 on its own
    assert input_dropout(x, 0.3, training=False) is x and input_dropout(x, 0.0, training=True) is x
    y = input_dropout(x, 0.3, training=True)
    dropped = (y == 0).all(dim=2)
    kept = ~dropped
    # a (video, dimension) is either zero at every step or scaled by 1/(1-p) at every step
    torch.testing.assert_close(y[kept], (x / 0.7)[kept])
    assert ((y == 0).any(dim=2) == dropped).all()
    assert abs(dropped.float().mean().item() - 0.3) < 0.03  # 2048 Bernoulli(0.3) draws


def _fit(path, **kw) -> tuple[DetectorModule, FeatureDataModule, pl.Trainer]:
    dm = FeatureDataModule(path, modalities=["rgb"], batch_size=4)
    module = instantiate(DetectorModule, head=TINY_HEAD, num_classes=dm.num_classes,
                         modality_dims=dm.modality_dims, **kw)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer


def test_standardize_is_measured_on_the_training_videos_and_kept_by_checkpoint_and_export(synthetic_h5, tmp_path):
    torch.manual_seed(0)
    module, dm, trainer = _fit(synthetic_h5, standardize=True, input_dropout=0.2)
    expected = feature_moments(FeatureFile(synthetic_h5), dm._ids["train"], ["rgb"])["rgb"]
    st = module.standardizers["rgb"]
    assert bool(st.ready)
    np.testing.assert_allclose(st.mean.numpy(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.std.numpy(), expected[1], rtol=1e-5, atol=1e-6)
    # the statistics are not those of all videos (test/validation do not leak in)
    everything = feature_moments(FeatureFile(synthetic_h5), list(FeatureFile(synthetic_h5).durations), ["rgb"])["rgb"]
    assert not np.allclose(everything[0], expected[0])
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_detector(ckpt)
    assert loaded.standardize and loaded.input_dropout == 0.2
    torch.testing.assert_close(loaded.standardizers["rgb"].mean, st.mean)
    # a resumed fit keeps the statistics it has instead of measuring again
    loaded.standardizers["rgb"].mean.add_(1.0)
    loaded.measure_input_statistics()
    torch.testing.assert_close(loaded.standardizers["rgb"].mean, st.mean + 1.0)
    # the exported RGB detector standardises the same way (checked inside export, and here)
    out = tmp_path / "deploy" / "m.pt"
    assert export_main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    rebuilt = load_state(state_path(out))
    g = torch.Generator().manual_seed(1)
    rgb = torch.randn(2, dm.modality_dims["rgb"], 9, generator=g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    rgb = rgb * mask.unsqueeze(1)
    module.eval()
    with torch.no_grad():
        ref = torch.sigmoid(module({"rgb": rgb, "mask": mask}).logits) * mask.unsqueeze(1)
    torch.testing.assert_close(rebuilt(rgb, mask), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.jit.load(str(out))(rgb, mask), ref, atol=1e-5, rtol=0)


def test_standardized_inputs_reach_the_head_with_zero_mean_unit_std(synthetic_h5):
    torch.manual_seed(0)
    module, dm, _ = _fit(synthetic_h5, standardize=True)
    seen = []
    module.head.register_forward_pre_hook(lambda mod, args: seen.append((args[0].detach(), args[1])))
    module.eval()
    with torch.no_grad():
        for batch in dm.train_dataloader():
            module(module.on_after_batch_transfer(batch, 0))
    x = torch.cat([xs.transpose(1, 2)[m] for xs, m in seen])  # valid steps only, (N, D)
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(x.shape[1]), atol=1e-3, rtol=0)
    assert all(((xs.abs().sum(1) == 0) | m).all() for xs, m in seen)  # padding 0


def test_standardize_without_a_feature_datamodule_is_a_clear_error():
    module = instantiate(DetectorModule, head=TINY_HEAD, num_classes=3, modality_dims={"rgb": 4}, standardize=True)
    with pytest.raises(RuntimeError, match="FeatureDataModule"):
        module.measure_input_statistics()
    with pytest.raises(ValueError, match="input_dropout"):
        instantiate(DetectorModule, head=TINY_HEAD, num_classes=3, modality_dims={"rgb": 4}, input_dropout=1.0)


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_a_teacher_standardises_each_of_its_modalities(fusion):
    from kd_detect.modules import TeacherModule

    dims = {"rgb": 4, "flow": 3}
    teacher = instantiate(TeacherModule, head=TINY_HEAD, num_classes=2, modality_dims=dims,
                          modalities=["rgb", "flow"], fusion=fusion, standardize=True)
    teacher.standardizers["rgb"].set_statistics(torch.full((4,), 2.0), torch.full((4,), 0.5))
    teacher.standardizers["flow"].set_statistics(torch.zeros(3), torch.ones(3))
    mask = torch.ones(1, 6, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.randn(1, 4, 6, generator=g), "flow": torch.randn(1, 3, 6, generator=g), "mask": mask}
    encoded = teacher.encode(batch)
    torch.testing.assert_close(encoded["rgb"], (batch["rgb"] - 2.0) / 0.5)
    torch.testing.assert_close(encoded["flow"], batch["flow"])
    assert teacher(batch).logits.shape == (1, 2, 6)


def test_modality_dropout_zeroes_whole_listed_modalities_of_a_video_and_never_all_of_them():
    torch.manual_seed(0)
    xs = {m: torch.rand(400, d, 6) + 1.0 for m, d in (("rgb", 3), ("flow", 4), ("pose", 5))}
    assert modality_dropout(xs, {"flow": 0.5}, training=False)["flow"] is xs["flow"]
    assert modality_dropout(xs, {"flow": 0.0}, training=True)["flow"] is xs["flow"]
    out = modality_dropout(xs, {"flow": 0.5, "pose": 0.25}, training=True)
    assert out["rgb"] is xs["rgb"]  # not listed: always kept, untouched
    for m, p in (("flow", 0.5), ("pose", 0.25)):
        zero = (out[m] == 0).flatten(1).all(1)
        kept = ~zero
        # a video's modality is either all zeros or exactly itself (no 1/(1-p) rescaling)
        torch.testing.assert_close(out[m][kept], xs[m][kept])
        assert abs(zero.float().mean().item() - p) < 0.08  # 400 Bernoulli(p) draws
    # flow and pose are drawn independently: both dropped on about p_flow * p_pose of the videos
    both = ((out["flow"] == 0).flatten(1).all(1) & (out["pose"] == 0).flatten(1).all(1)).float().mean().item()
    assert abs(both - 0.125) < 0.05
    # every modality listed: a video drawn to lose them all keeps them all
    full = modality_dropout(xs, {"rgb": 0.9, "flow": 0.9, "pose": 0.9}, training=True)
    alive = torch.stack([(full[m] != 0).flatten(1).any(1) for m in xs])
    assert alive.any(0).all()
    intact = alive.all(0)  # 0.9^3 = 73 % of videos were drawn to lose all three: they keep all three
    assert intact.float().mean().item() > 0.6
    for m in xs:
        torch.testing.assert_close(full[m][intact], xs[m][intact])


def _teacher(**kw) -> TeacherModule:
    return instantiate(TeacherModule, head=TINY_HEAD, num_classes=3, modalities=["rgb", "flow", "pose"],
                       modality_dims={"rgb": 4, "flow": 5, "pose": 6}, **kw)


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_teacher_applies_input_and_modality_dropout_in_training_only(fusion):
    """The teacher once ignored input_dropout: its head must see the dropped input in training."""
    torch.manual_seed(0)
    batch = {m: torch.rand(6, d, 8) + 1.0 for m, d in (("rgb", 4), ("flow", 5), ("pose", 6))}
    batch["mask"] = torch.ones(6, 8, dtype=torch.bool)
    t = _teacher(fusion=fusion, input_dropout=0.4, modality_dropout={"flow": 0.5})
    seen = []
    heads = list(t.heads.values()) if fusion == "late" else [t.head]
    if fusion == "mid":  # the embeddings see the encoded modalities
        for name, emb in t.embeddings.items():
            emb.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, args[0])))
    else:
        for h in heads:
            h.register_forward_pre_hook(lambda mod, args: seen.append((None, args[0])))
    t.eval()
    with torch.no_grad():
        t(batch)
    assert all((x != 0).all() for _, x in seen)  # eval: nothing dropped
    seen.clear()
    t.train()
    torch.manual_seed(1)
    with torch.no_grad():
        t(batch)
    x = torch.cat([x for _, x in seen], dim=1)  # (B, D_total, T) in every fusion
    zero_dims = (x == 0).all(2)
    assert 0 < zero_dims.float().mean().item() < 1
    kept = ~zero_dims
    # the kept dimensions are scaled by 1/(1-0.4): they are the inputs' values / 0.6
    raw = torch.cat([batch["rgb"], batch["flow"], batch["pose"]], dim=1)
    torch.testing.assert_close(x[kept], (raw / 0.6)[kept])
    flow = x[:, 4:9]
    flow_gone = (flow == 0).flatten(1).all(1)
    assert flow_gone.any() and not flow_gone.all()  # six videos, Bernoulli(0.5) each, seed 1


@pytest.mark.parametrize("fusion", ["early", "mid", "late"])
def test_teacher_modality_dropout_alone_drops_only_the_listed_modality_of_whole_videos(fusion):
    torch.manual_seed(0)
    batch = {m: torch.rand(32, d, 8) + 1.0 for m, d in (("rgb", 4), ("flow", 5), ("pose", 6))}
    batch["mask"] = torch.ones(32, 8, dtype=torch.bool)
    t = _teacher(fusion=fusion, modality_dropout={"flow": 0.5})
    seen = {}
    if fusion == "mid":
        for name, emb in t.embeddings.items():
            emb.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
    elif fusion == "late":
        for name, h in t.heads.items():
            h.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
    else:
        t.head.register_forward_pre_hook(lambda mod, args: seen.update(zip(("rgb", "flow", "pose"),
                                                                           args[0].split([4, 5, 6], dim=1))))
    t.train()
    with torch.no_grad():
        t(batch)
    torch.testing.assert_close(seen["rgb"], batch["rgb"])  # not listed: untouched
    torch.testing.assert_close(seen["pose"], batch["pose"])
    gone = (seen["flow"] == 0).flatten(1).all(1)
    assert 0 < int(gone.sum()) < 32  # 32 Bernoulli(0.5) draws, seed 0
    torch.testing.assert_close(seen["flow"][~gone], batch["flow"][~gone])  # kept videos: unscaled


def test_teacher_modality_dropout_is_validated_and_kept_by_its_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        _teacher(modality_dropout={"depth": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        _teacher(modality_dropout={"flow": 1.0})
    t = _teacher(modality_dropout={"flow": 0.5, "pose": 0.25}, input_dropout=0.1)
    ckpt = tmp_path / "t.ckpt"
    torch.save({"state_dict": t.state_dict(), "hyper_parameters": dict(t.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    loaded = TeacherModule.load_from_checkpoint(ckpt, head=TINY_HEAD)
    assert loaded.modality_dropout == {"flow": 0.5, "pose": 0.25} and loaded.input_dropout == 0.1
