"""The event extraction threshold chosen on validation (``event_threshold: auto``):
the choice rule, the multi-threshold metric against one EventMAP per cut, and the module
path (chosen per validation epoch, kept in the checkpoint, used at test)."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from kd_detect.errors import UsageError
from kd_detect.metrics import EVENT_THRESHOLDS, EventMAP, EventThresholdSearch, choose_threshold
from kd_detect.modules import DetectorModule, instantiate, load_detector
from tests.helpers import TINY_HEAD


def test_choose_threshold_takes_the_best_cut_and_breaks_ties_towards_the_protocols_default():
    assert choose_threshold({0.1: 0.30, 0.3: 0.45, 0.5: 0.40}) == 0.3
    assert choose_threshold({0.1: 0.40, 0.5: 0.40, 0.7: 0.40}) == 0.5  # ties: the one closest to 0.5
    assert choose_threshold({0.2: 0.40, 0.8: 0.40, 0.05: 0.1}) == 0.2  # equally close: the lower
    assert choose_threshold({t: 0.0 for t in EVENT_THRESHOLDS}) == 0.5  # nothing extracted anywhere: the default
    assert choose_threshold({0.1: float("nan"), 0.6: 0.2}) == 0.6  # NaN (no ground truth) never wins
    with pytest.raises(ValueError, match="no candidate"):
        choose_threshold({})


def _videos(scale: float, seed: int = 0):
    """Three videos whose class-0 probability is ``scale`` inside each true segment and
    ``0.05 · scale`` outside: a model that is right but unconfident when ``scale`` is low."""
    rng = np.random.default_rng(seed)
    T, C = 40, 2
    probs = torch.zeros(3, C, T)
    segments = []
    for b in range(3):
        start = int(rng.integers(2, 20))
        end = start + int(rng.integers(6, 15))
        probs[b, 0] = 0.05 * scale
        probs[b, 0, start:end] = scale
        probs[b, 1] = 0.01
        segments.append(np.array([[0, float(start), float(end)]]))
    mask = torch.ones(3, T, dtype=torch.bool)
    return probs, mask, torch.full((3,), float(T)), segments, ["a", "b", "c"]


@pytest.mark.parametrize("scale, want", [(0.9, 0.5), (0.35, 0.3), (0.08, 0.05)])
def test_an_unconfident_but_right_model_gets_the_cut_below_its_scores(scale, want):
    """Exact segments at probability ``scale``, background at 5 % of it: every cut in
    (0.05·scale, scale] extracts the true segments exactly (event mAP 1); the choice is the
    one of them closest to 0.5. At 0.5 the unconfident models extract nothing (mAP 0)."""
    search = EventThresholdSearch(2, EVENT_THRESHOLDS)
    search.update(*_videos(scale))
    chosen, best, maps = search.compute()
    assert chosen == want and best == pytest.approx(1.0)
    assert maps[0.5] == pytest.approx(1.0 if scale > 0.5 else 0.0)
    assert all(maps[t] == pytest.approx(1.0) for t in EVENT_THRESHOLDS if 0.05 * scale < t <= scale)


def test_the_search_equals_one_event_map_per_threshold_over_several_updates():
    rng = np.random.default_rng(3)
    probs = torch.from_numpy(np.stack([np.convolve(rng.random(58), np.ones(9) / 9, mode="valid")[:50]
                                       for _ in range(2 * 3)]).reshape(2, 3, 50)).float()
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 37:] = False
    segments = [np.array([[0, 2.0, 9.0], [1, 10.0, 30.0]]), np.array([[2, 1.0, 11.0]])]
    thresholds = (0.45, 0.5, 0.55)
    search = EventThresholdSearch(3, thresholds, merge_gap=1.0)
    singles = [EventMAP(3, threshold=t, merge_gap=1.0) for t in thresholds]
    for half in (slice(0, 1), slice(1, 2)):
        args = (probs[half], mask[half], torch.tensor([25.0, 18.5])[half], segments[half], ["a", "b"][half])
        search.update(*args)
        for m in singles:
            m.update(*args)
    chosen, best, maps = search.compute()
    want = {t: m.compute()["event_map"].item() for t, m in zip(thresholds, singles)}
    assert maps == pytest.approx(want)
    assert chosen == choose_threshold(want) and best == pytest.approx(want[chosen])
    search.reset()
    assert all(not m.det_score for m in search.metrics)
    with pytest.raises(ValueError, match=r"EventThresholdSearch.update: video 'b': no valid step"):
        search.update(probs, torch.tensor([[True] * 50, [False] * 50]), [25.0, 18.5], segments, ["a", "b"])
    with pytest.raises(ValueError, match="distinct probabilities"):
        EventThresholdSearch(3, (0.5, 0.5))
    with pytest.raises(ValueError, match="distinct probabilities"):
        EventThresholdSearch(3, (0.5, 1.5))


# ------------------------------------------------------------------------------ the module
DIMS = {"rgb": 12}


def _batches(n: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = 30
        mask = torch.ones(2, T, dtype=torch.bool)
        mask[1, 21:] = False
        labels = torch.zeros(2, 3, T)
        segments = []
        for b, (c, s, e) in enumerate([(0, 3, 12), (2, 5, 18)]):
            labels[b, c, s:e] = 1.0
            segments.append(np.array([[c, float(s), float(e)]]))
        rgb = torch.randn(2, 12, T, generator=g) + 2.0 * labels.sum(1, keepdim=True)
        out.append({"rgb": rgb * mask.unsqueeze(1), "labels": labels, "mask": mask,
                    "meta": {"video_id": [f"v{i}a", f"v{i}b"], "duration": torch.tensor([30.0, 21.0]),
                             "length": torch.tensor([30, 21]), "offset": torch.zeros(2, dtype=torch.long),
                             "segments": segments}})
    return out


def _loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def _trainer():
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def test_validation_chooses_the_threshold_the_checkpoint_keeps_and_test_uses(tmp_path):
    torch.manual_seed(0)
    candidates = [0.3, 0.4, 0.5, 0.6]
    module = instantiate(DetectorModule, head=TINY_HEAD, num_classes=3, modality_dims=DIMS, event_map=True,
                         event_threshold="auto", event_thresholds=candidates)
    assert module.choose_event_threshold and module.event_threshold_chosen is None
    val, test = _batches(2, seed=0), _batches(2, seed=1)
    trainer = _trainer()
    logged = trainer.validate(module, _loader(val), verbose=False)[0]
    # the choice, computed independently from the model's own probabilities
    module.eval()
    singles = {t: EventMAP(3, threshold=t) for t in candidates}
    with torch.no_grad():
        for batch in val:
            probs = torch.sigmoid(module(batch).logits)
            for m in singles.values():
                m.update(probs, batch["mask"], batch["meta"]["duration"], batch["meta"]["segments"],
                         batch["meta"]["video_id"])
    maps = {t: m.compute()["event_map"].item() for t, m in singles.items()}
    assert module.event_threshold_chosen == choose_threshold(maps)
    assert logged["val/event_threshold"] == pytest.approx(module.event_threshold_chosen)
    assert logged["val/event_map"] == pytest.approx(maps[module.event_threshold_chosen])
    # kept in the checkpoint; test extracts segments at it
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_detector(path)
    assert loaded.event_threshold_chosen == module.event_threshold_chosen
    result = _trainer().test(loaded, _loader(test), verbose=False)[0]
    assert result["test/event_threshold"] == pytest.approx(module.event_threshold_chosen)
    direct = EventMAP(3, threshold=module.event_threshold_chosen)
    with torch.no_grad():
        for batch in test:
            direct.update(torch.sigmoid(loaded.eval()(batch).logits), batch["mask"], batch["meta"]["duration"],
                          batch["meta"]["segments"], batch["meta"]["video_id"])
    assert result["test/event_map"] == pytest.approx(direct.compute()["event_map"].item())


def test_a_sanity_check_chooses_nothing_and_test_without_a_choice_is_refused():
    torch.manual_seed(0)
    module = instantiate(DetectorModule, head=TINY_HEAD, num_classes=3, modality_dims=DIMS, event_map=True,
                         event_threshold="auto")
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(module, _loader(_batches(1)), _loader(_batches(1)))
    assert module.event_threshold_chosen is None
    with pytest.raises(UsageError, match="event_threshold: auto uses the threshold chosen on the validation videos"):
        _trainer().test(module, _loader(_batches(1)), verbose=False)
    fixed = instantiate(DetectorModule, head=TINY_HEAD, num_classes=3, modality_dims=DIMS, event_map=True,
                        event_threshold=0.3)
    result = _trainer().test(fixed, _loader(_batches(1)), verbose=False)[0]
    assert result["test/event_threshold"] == pytest.approx(0.3) and fixed.event_threshold_chosen is None


@pytest.mark.parametrize("kw, match", [
    ({"event_threshold": 1.5}, r"event_threshold must be a probability in \[0, 1\] or 'auto', got 1.5"),
    ({"event_threshold": "best"}, "or 'auto', got 'best'"),
    ({"event_threshold": 0.5, "event_thresholds": [0.1, 0.2]}, "candidates of event_threshold: auto"),
])
def test_bad_event_threshold_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        instantiate(DetectorModule, head=TINY_HEAD, num_classes=3, modality_dims=DIMS, event_map=True, **kw)
