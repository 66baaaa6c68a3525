"""Checkpoints written before the issue-15 move (tests/fixtures/, commit de75d2b) still load
and give the probabilities they gave then (``expected.pt``, computed by the old code)."""

from __future__ import annotations

from pathlib import Path

import torch

from kd_detect.modules.inference import load_for_inference

FIXTURES = Path(__file__).parent / "fixtures"


def test_old_checkpoints_load_and_predict_as_before():
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    for name, kind in (("student", "StudentModule"), ("teacher", "TeacherModule")):
        predictor = load_for_inference(FIXTURES / f"{name}.ckpt")
        assert predictor.kind == kind
        assert predictor.classes == ["a", "b", "c"]
        got = predictor(expected["batch"])
        torch.testing.assert_close(got, expected[name], atol=1e-6, rtol=0)
        assert float(got.abs().sum()) > 0  # the comparison is not of two zero tensors
