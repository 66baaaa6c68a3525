"""``make bench`` (benchmarks/bench.py): the quick mode end to end on tiny sizes, and the
fast paths it measures give the same results as the straightforward ones."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
import torch

from benchmarks import bench, cli, seqloss
from benchmarks.common import DataShape, interleaved, write_data

TINY_CHARADES = DataShape("charades", 6, (8, 14), (("rgb", 16), ("flow", 8)), 5, segments=2)
TINY_TSU = DataShape("tsu", 3, (30, 40), (("rgb", 16), ("pose", 4)), 3, segments=2)
TINY_SIZES = dict(charades_videos=6, tsu_videos=3, load_batch=4, tsu_batch=2, load_repeats=1, distill_batch=2,
                  distill_batches=2, distill_repeats=1, infer_repeats=1, seq_steps=[64, 128], seq_repeats=1,
                  matmul_n=64, worker_repeats=1, cli_repeats=1, event_videos=3, event_repeats=1)
HEADLINE = ["kd_cached_over_plain", "kd_live_over_plain", "kd_live_over_floor", "h5_over_npy", "h5_over_npy_read",
            "h5_over_npy_fp16", "loader_over_raw", "global_kl_extra_mb_T16384", "global_gram_extra_mb_T16384",
            "student_steps_per_s", "pdan_flops_over_matmul", "cli_help_seconds", "cli_check_seconds",
            "loader_floor_over_raw", "loader_over_floor"]


def test_quick_mode_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "sizes", lambda quick: dict(TINY_SIZES))
    monkeypatch.setattr(bench, "CHARADES", TINY_CHARADES)
    monkeypatch.setattr(bench, "TSU", TINY_TSU)
    monkeypatch.setattr(seqloss, "LOSSES", {k: seqloss.LOSSES[k] for k in ("global_kl", "global_gram")})
    # the real commands take seconds each: time two tiny ones, one of which fails
    monkeypatch.setattr(cli, "cli_commands", lambda small: {"help": [sys.executable, "-c", "pass"],
                                                            "check": [sys.executable, "-c", "raise SystemExit(3)"]})
    out = tmp_path / "bench"
    assert bench.main(["--quick", "--out", str(out), "--tmp", str(tmp_path)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in HEADLINE:
        assert key in report, key
    for key in ("kd_cached_over_plain", "kd_live_over_plain", "kd_live_over_floor", "h5_over_npy",
                "h5_over_npy_read", "h5_over_npy_fp16", "loader_over_raw", "student_steps_per_s",
                "pdan_flops_over_matmul", "cli_help_seconds"):
        assert report[key] > 0, key
    d = report["results"]["distill"]
    assert report["kd_live_over_floor"] == pytest.approx(d["over_plain"]["kd_live"] / d["live_flop_floor_over_plain"])
    assert d["live_flop_floor_over_plain"] > 1.0
    assert report["kd_live_over_parts"] == pytest.approx(
        d["over_plain"]["kd_live"] / (d["over_plain"]["kd_cached"] + d["teacher_forward_over_plain_step"]))
    assert set(report["workers_videos_per_s"]) == {"0", "1", "2"}
    transport = report["results"]["workers"]["transport_videos_per_s"]
    assert set(transport) == {"fresh_0", "fresh_1", "reused_1"} and all(v > 0 for v in transport.values())
    assert report["results"]["cli"]["commands"]["check"] == {"argv": sys.executable.rsplit("/", 1)[-1] + " -c raise "
                                                             "SystemExit(3)", "exit_code": 3, "seconds": None}
    assert report["cli_check_seconds"] is None
    variants = report["results"]["loading"]["charades"]["variants"]
    assert {"h5_model_float16", "h5_model_float32", "npy_float16"} <= set(variants)
    assert report["bf16_all_finite"] is True
    assert report["meta"]["threads"] == 1 and report["meta"]["quick"] is True
    sq = report["results"]["seq_losses"]["losses"]
    assert set(sq) == {"global_kl", "global_gram"}
    assert all(p["finite"] and p["extra_mb"] >= 0 for v in sq.values() for p in v["points"].values())
    assert {t["key"] for t in report["targets"]} >= {"kd_cached_over_plain", "h5_over_npy"}
    md = (out / "report.md").read_text()
    assert "## Targets" in md and "kd_live_over_floor" in md and "workers" in md and "## 7. Command line" in md
    charades = report["results"]["loading"]["charades"]
    assert (f"run at {charades['floor_over_raw']:.2f} of the raw read (fp32); the loader reaches "
            f"{charades['loader_over_floor']:.2f} of that floor") in md
    assert not list(out.glob(".*.tmp"))  # written atomically
    events = report["results"]["events"]
    assert report["event_search_over_one_cut"] == pytest.approx(events["search_ms_per_video"]
                                                                / events["one_cut_ms_per_video"])
    assert set(events["segments_per_video"]) == {str(t) for t in events["cuts"]}  # (JSON keys)
    assert "## 8. Event threshold search" in md


def test_floor_copies_are_the_loaders_batches(tmp_path):
    """The loading floor does the loader's work and no less: after one run its arrays hold
    exactly the host batches of the loader's epoch (rows, padding zeros, shapes, dtypes)."""
    from benchmarks.loading import _floor_copier
    from kd_detect.data.datamodule import FeatureDataModule

    data = write_data(TINY_CHARADES, tmp_path, dtypes=("float16",))
    dm = FeatureDataModule(str(data.h5["float16"]), batch_size=4, val_subset="training", test_subset="training")
    loader = dm.train_dataloader()
    floor = _floor_copier(loader)
    floor()
    got = list(loader)
    assert len(got) == len(floor.batches) == 2
    for batch, arrays in zip(got, floor.batches):
        for field, array in zip(["rgb", "flow", "labels"], arrays):
            assert batch[field].dtype == torch.from_numpy(array).dtype
            assert torch.equal(batch[field], torch.from_numpy(array)), field
    assert (~got[0]["mask"]).any() or (~got[1]["mask"]).any()  # padding was part of it
    dm.teardown("fit")


def test_each_drained_epoch_is_a_new_epoch_of_the_training_loader(tmp_path, monkeypatch):
    """The loading benchmark times epochs as training runs them: the training sampler is set
    to epoch 0, 1, ... (Lightning's set_epoch), so the order of the videos changes; draining
    without it would time epoch 0 again and again."""
    from benchmarks.loading import _drain
    from kd_detect.data.datamodule import FeatureDataModule

    data = write_data(TINY_CHARADES, tmp_path, dtypes=("float16",))
    dm = FeatureDataModule(str(data.h5["float16"]), batch_size=2, val_subset="training", test_subset="training")
    loader = dm.train_dataloader()
    orders = []
    real_iter = type(loader.sampler).__iter__

    def recording_iter(self):
        items = list(real_iter(self))
        orders.append((self.epoch, [i for i, _ in items]))
        return iter(items)

    monkeypatch.setattr(type(loader.sampler), "__iter__", recording_iter)
    for _ in range(3):
        assert _drain(loader) == len(dm.dataset("train"))
    assert [e for e, _ in orders] == [0, 1, 2]
    assert orders[0][1] != orders[1][1] and sorted(orders[0][1]) == sorted(orders[1][1])
    dm.teardown("fit")


def test_transport_batches_have_the_template_shapes_and_reuse_only_when_asked():
    from benchmarks.loading import _FreshBatches

    template = {"rgb": torch.ones(2, 3, 4, dtype=torch.float16), "mask": torch.ones(2, 3, dtype=torch.bool)}
    fresh, reused = _FreshBatches(template), _FreshBatches(template, reuse=True)
    a, b = fresh([0, 1]), fresh([0, 1])
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in template.items()}
    assert a["rgb"] is not b["rgb"] and not a["rgb"].is_shared()
    c, d = reused([0, 1]), reused([0, 1])
    assert c["rgb"] is d["rgb"] and c["rgb"].is_shared()


def test_interleaved_runs_round_robin():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3 and all(len(v) == 2 for v in times.values())


def test_pread_path_equals_h5py(tmp_path):
    """read_rows' direct read of contiguous datasets == h5py's read, for windows and clipping;
    chunked/compressed datasets take the HDF5 path and read the same."""
    from kd_detect.data.dataset import dataset_layout, read_rows

    rng = np.random.default_rng(0)
    path = tmp_path / "x.h5"
    arrays = {"f16": rng.standard_normal((37, 5)).astype(np.float16),
              "f32": rng.standard_normal((37, 3)).astype(np.float32),
              "u8": rng.integers(0, 2, (37, 4)).astype(np.uint8)}
    with h5py.File(path, "w") as h5:
        for name, arr in arrays.items():
            h5.create_dataset(name, data=arr)
            h5.create_dataset(name + "_gz", data=arr, compression="gzip", chunks=(8, arr.shape[1]))
        h5.create_group("group")
    layouts: dict = {}
    with h5py.File(path, "r") as h5:
        for name, arr in arrays.items():
            assert dataset_layout(h5, name).offset is not None
            assert dataset_layout(h5, name + "_gz").offset is None
            for key in (name, name + "_gz"):
                for start, stop in ((0, None), (5, 17), (30, 99), (37, None), (3, 3)):
                    got = read_rows(h5, key, start, stop, layouts)
                    assert got.dtype == arr.dtype
                    np.testing.assert_array_equal(got, arr[start:stop])
        assert read_rows(h5, "missing", 0, None, layouts) is None
        with pytest.raises(KeyError):
            read_rows(h5, "group", 0, None, layouts)


def test_pdan_no_grad_path_is_bitwise_equal():
    from kd_detect.models.heads import PDAN

    torch.manual_seed(0)
    head = PDAN(12, 4, hidden=16, num_layers=3).eval()
    x = torch.randn(3, 12, 40)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False
    with_graph = head(x, mask)
    with torch.no_grad():
        fast = head(x, mask)
    assert torch.equal(with_graph.features, fast.features) and torch.equal(with_graph.logits, fast.logits)


def test_global_kl_panel_cap():
    from kd_detect.distill.global_relation import PANEL_ELEMENTS, panel_rows

    assert panel_rows(256, 32, 100) == 256  # Charades batches: unchanged
    assert panel_rows(256, 1, 16384) == PANEL_ELEMENTS // 16384
    assert panel_rows(256, 64, 100_000) == 8 and panel_rows(4, 1, 10) == 4


def test_generated_data_matches_between_h5_and_npy(tmp_path):
    data = write_data(TINY_CHARADES, tmp_path, dtypes=("float16",))
    with h5py.File(data.h5["float16"], "r") as h5:
        for vid in h5["videos"]:
            for m, _ in TINY_CHARADES.modalities:
                np.testing.assert_array_equal(h5["videos"][vid][m][()], np.load(data.npy["float16"] / f"{vid}_{m}.npy"))


def test_cuda_device_without_gpu_says_one_line_and_exits_0(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the CUDA path is not what this test covers")
    out = tmp_path / "bench"
    assert bench.main(["--quick", "--device", "cuda", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "no CUDA GPU" in printed[0]
    assert not out.exists()


def test_amp_dtype_is_fp32_on_cpu():
    assert bench.amp_dtype("cpu") is None
