"""Test helpers (not tests): fake public releases for the converters (``fixtures_release``),
the DDP probe callback (``ddp_probe``, found through PYTHONPATH by the spawned runs) and
the tiny head shared by the module tests."""

#: a 2-layer, 16-wide PDAN: the smallest head the module tests train
TINY_HEAD = {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 16, "num_layers": 2}}
