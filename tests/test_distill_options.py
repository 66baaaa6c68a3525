"""The method's optional fixes (issue 13 C): per-video centring in L_global/L_boundary,
false negatives and within-video negatives in L_atomic, ``weight: auto`` state. Each
against a naive reference or hand-computed values, plus known properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from kd_detect.distill import CRD, AtomicContrastive, BoundarySaliency, GlobalContextualRelation, LogitKD
from kd_detect.distill._common import center
from kd_detect.distill._contrastive import info_nce
from kd_detect.models.heads.base import HeadOutput

torch.set_num_threads(1)
C = 3


def inputs(B=3, T=9, Fs=5, Ft=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    m = mask[:, None].double()
    s = torch.randn(B, Fs, T, generator=g, dtype=torch.float64) * m
    t = torch.randn(B, Ft, T, generator=g, dtype=torch.float64) * m
    labels = (torch.rand(B, C, T, generator=g) > 0.6).double() * m
    return HeadOutput(s, s[:, :C]), HeadOutput(t, t[:, :C]), mask, labels


# ------------------------------------------------------------------ centring
CENTERED = {
    "global_kl": lambda: GlobalContextualRelation(tau_r=0.3, chunk_size=2, center=True),
    "global_gram": lambda: GlobalContextualRelation(mode="gram", center=True),
    "boundary_kl": lambda: BoundarySaliency(strides=(1, 2), tau_b=0.3, center=True),
    "boundary_l2": lambda: BoundarySaliency(mode="l2", center=True),
}


def test_center_by_hand():
    x = torch.tensor([[[1.0, 3.0, 100.0], [2.0, 2.0, -7.0]]])
    mask = torch.tensor([[True, True, False]])
    # mean over the valid steps: (2, 2); padding stays 0
    assert center(x, mask).tolist() == [[[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]


def naive_centered(x: Tensor, mask: Tensor, b: int) -> Tensor:
    idx = [t for t in range(mask.shape[1]) if mask[b, t]]
    v = x[b][:, idx]
    return F.normalize(v - v.mean(1, keepdim=True), dim=0)


def ref_global_centered(p, s, t, mask):
    tot, rows, per_video = 0.0, 0, []
    for b in range(mask.shape[0]):
        S, Fm = naive_centered(s.features, mask, b), naive_centered(t.features, mask, b)
        if p.mode == "gram":
            per_video.append(((S.T @ S - Fm.T @ Fm) ** 2).sum() / S.shape[1] ** 2)
            continue
        for i in range(S.shape[1]):
            ls = torch.log_softmax(S[:, i] @ S / p.tau_r, 0)
            lf = torch.log_softmax(Fm[:, i] @ Fm / p.tau_r, 0)
            tot, rows = tot + (lf.exp() * (lf - ls)).sum(), rows + 1
    return torch.stack(per_video).mean() if p.mode == "gram" else tot / rows


def ref_boundary_centered(p, s, t, mask):
    per_video = []
    for b in range(mask.shape[0]):
        S, Fm = naive_centered(s.features, mask, b), naive_centered(t.features, mask, b)
        n = S.shape[1]  # this test's masks are prefixes, so consecutive valid steps are neighbours

        def sal(X, n=n):
            vals = []
            for i in range(1, n):
                ds = [(X[:, i] - X[:, i - k]).abs().sum() / math.sqrt(X.shape[0]) for k in p.strides if i - k >= 0]
                vals.append(sum(ds) / len(ds))
            return torch.stack(vals)

        bs, bf = sal(S), sal(Fm)
        if p.mode == "kl":
            ls, lf = torch.log_softmax(bs / p.tau_b, 0), torch.log_softmax(bf / p.tau_b, 0)
            per_video.append((lf.exp() * (lf - ls)).sum())
        else:
            mm = lambda v: (v - v.min()) / (v.max() - v.min()).clamp_min(1e-6)  # noqa: E731
            per_video.append(((mm(bs) - mm(bf)) ** 2).mean())
    return torch.stack(per_video).mean()


@pytest.mark.parametrize("name", sorted(CENTERED))
def test_centred_losses_match_naive_reference(name):
    p = CENTERED[name]().double()
    p.setup(5, 4, C)
    s, t, mask, _ = inputs()
    ref = ref_global_centered if name.startswith("global") else ref_boundary_centered
    torch.testing.assert_close(p(s, t, mask), ref(p, s, t, mask), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", sorted(CENTERED))
def test_centred_losses_ignore_a_per_video_constant_and_padding(name):
    p = CENTERED[name]().double()
    p.setup(5, 4, C)
    s, t, mask, _ = inputs()
    base = p(s, t, mask)
    g = torch.Generator().manual_seed(5)
    shift_s = 10 * torch.randn(3, 5, 1, generator=g, dtype=torch.float64)  # one vector per video
    shift_t = 10 * torch.randn(3, 4, 1, generator=g, dtype=torch.float64)
    m = mask[:, None]
    garbage = lambda x: torch.where(m, x, torch.full_like(x, 1e6))  # noqa: E731
    shifted = p(HeadOutput(garbage(s.features + shift_s), s.logits), HeadOutput(garbage(t.features + shift_t), t.logits), mask)
    torch.testing.assert_close(shifted, base, rtol=1e-7, atol=1e-9)
    uncentred = CENTERED[name]().double()
    uncentred.center = False
    uncentred.setup(5, 4, C)
    moved = uncentred(HeadOutput(s.features + shift_s, s.logits), HeadOutput(t.features + shift_t, t.logits), mask)
    assert not torch.allclose(moved, uncentred(s, t, mask), rtol=1e-3)  # the property is centring's doing


def test_center_false_is_unchanged():
    s, t, mask, _ = inputs()
    for a, b in ((GlobalContextualRelation(tau_r=0.3), GlobalContextualRelation(tau_r=0.3, center=False)),
                 (BoundarySaliency(), BoundarySaliency(center=False))):
        a.setup(5, 4, C), b.setup(5, 4, C)
        assert a(s, t, mask).item() == b(s, t, mask).item()


def test_centred_gradient_reaches_student_only():
    p = GlobalContextualRelation(tau_r=0.3, center=True).double()
    p.setup(5, 4, C)
    s, t, mask, _ = inputs()
    sf = s.features.clone().requires_grad_()
    p(HeadOutput(sf, s.logits), t, mask).backward()
    assert sf.grad is not None and sf.grad.abs().sum() > 0 and (sf.grad[~mask[:, None].expand_as(sf)] == 0).all()


# ------------------------------------------------------------------ atomic negatives
def identity_heads(p):
    with torch.no_grad():
        for lin in (p.proj_s, p.proj_t):
            lin.weight.copy_(torch.eye(lin.weight.shape[0], lin.weight.shape[1]))
            lin.bias.zero_()
    return p


def test_exclude_same_label_by_hand():
    """Three per-step atoms of one video, identity heads, τ = 1. Atoms 0 and 1 carry class
    0, atom 2 nothing: atom 0's only negative is atom 2 (atom 1 has its label set), atom
    1's only negative is atom 2, atom 2's negatives are 0 and 1."""
    p = AtomicContrastive(window=1, embed_dim=2, tau=1.0, exclude_same_label=True)
    p.setup(2, 2, 2)
    identity_heads(p.double())
    s = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)  # unit: e1, e2, (1,1)/√2
    t = s.clone()
    labels = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    r = 1 / math.sqrt(2)
    # cosines: q0·k0 = 1, q0·k2 = r; q1·k1 = 1, q1·k2 = r; q2·k2 = 1, q2·k0 = q2·k1 = r
    want = (2 * math.log(1 + math.exp(r - 1)) + math.log(1 + 2 * math.exp(r - 1))) / 3
    got = p(HeadOutput(s, s), HeadOutput(t, t), mask, labels)
    assert got.item() == pytest.approx(want, rel=1e-12)
    plain = AtomicContrastive(window=1, embed_dim=2, tau=1.0)
    plain.setup(2, 2, 2)
    identity_heads(plain.double())
    every = (2 * math.log(1 + math.exp(0 - 1) + math.exp(r - 1)) + math.log(1 + 2 * math.exp(r - 1))) / 3
    assert plain(HeadOutput(s, s), HeadOutput(t, t), mask).item() == pytest.approx(every, rel=1e-12)


def ref_restricted(p, s, t, mask, labels, seed):
    """Per-atom InfoNCE, written as loops: atoms, their videos and label sets, then for
    every anchor the softmax over its positive and its allowed negatives."""
    sa, ta, vid, sets = [], [], [], []
    for b in range(mask.shape[0]):
        idx = [i for i in range(mask.shape[1]) if mask[b, i]]
        for k in range(0, len(idx), p.window):
            w = idx[k : k + p.window]
            sa.append(s[b][:, w].mean(1))
            ta.append(t[b][:, w].mean(1))
            vid.append(b)
            sets.append(frozenset(c for c in range(labels.shape[1]) if any(labels[b, c, i] > 0.5 for i in w)))
    torch.manual_seed(seed)
    n = len(sa)
    pick = list(range(n)) if p.max_atoms <= 0 or n <= p.max_atoms else torch.randperm(n)[: p.max_atoms].tolist()
    q = [F.normalize(p.proj_s(sa[i]), dim=0) for i in pick]
    k = [F.normalize(p.proj_t(ta[i]), dim=0) for i in pick]
    v, y = [vid[i] for i in pick], [sets[i] for i in pick]

    def allowed(i, j):
        if i == j:
            return True
        if p.negatives == "video" and v[i] != v[j]:
            return False
        return not (p.exclude_same_label and y[i] == y[j])

    def one(a, b):
        tot = 0.0
        for i in range(len(a)):
            js = [j for j in range(len(b)) if allowed(i, j)]
            logits = torch.stack([a[i] @ b[j] / p.tau for j in js])
            tot = tot - (logits[js.index(i)] - torch.logsumexp(logits, 0))
        return tot / len(a)

    return 0.5 * (one(q, k) + one(k, q)) if p.symmetric else one(q, k)


NEG_CONFIGS = [
    dict(window=2, exclude_same_label=True),
    dict(window=1, negatives="video"),
    dict(window=3, exclude_same_label=True, negatives="video", symmetric=True),
    dict(window=2, exclude_same_label=True, max_atoms=4),
]


@pytest.mark.parametrize("cfg", NEG_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_restricted_negatives_match_naive_per_atom_reference(cfg):
    torch.manual_seed(0)
    p = AtomicContrastive(embed_dim=6, tau=0.3, **cfg)
    p.setup(5, 4, C)
    p.double()
    s, t, mask, labels = inputs(T=10)
    labels[:, 1:] = 0  # few classes so that equal label sets do occur
    torch.manual_seed(7)
    got = p(s, t, mask, labels)
    with torch.no_grad():
        want = ref_restricted(p, s.features, t.features, mask, labels, 7)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_video_negatives_alone_in_its_video_gives_zero():
    """A video with one atom has no within-video negative: its term is exactly 0."""
    p = AtomicContrastive(window=4, embed_dim=3, negatives="video")
    p.setup(5, 4, C)
    p.double()
    s, t, mask, _ = inputs(B=3, T=3)  # every video fits in one window of 4
    assert p(s, t, mask).item() == 0.0


def test_info_nce_with_everything_excluded_is_zero_and_attached():
    q = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.ones(4, 2, dtype=torch.bool)  # all the same label set
    loss = info_nce(q, q.detach(), 0.2, labels=labels)
    loss.backward()
    assert loss.item() == 0.0 and q.grad is not None and torch.isfinite(q.grad).all()


def test_labels_are_required_only_by_plugins_that_use_them():
    s, t, mask, labels = inputs()
    p = AtomicContrastive(embed_dim=4, exclude_same_label=True)
    p.setup(5, 4, C)
    with pytest.raises(ValueError, match="labels"):
        p(s, t, mask)
    for q in (AtomicContrastive(embed_dim=4), CRD(embed_dim=4), LogitKD()):
        q.setup(5, 4, C)
        q.double()
        assert q(s, t, mask, labels).item() == pytest.approx(q(s, t, mask).item())


def test_bad_negatives_options_are_rejected():
    with pytest.raises(ValueError):
        AtomicContrastive(negatives="world")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AtomicContrastive(negatives="video", gather_distributed=True)
    with pytest.raises(ValueError):
        AtomicContrastive(weight="half")


# ------------------------------------------------------------------ weight: auto (plugin state)
def test_auto_weight_running_mean_then_fixed():
    p = GlobalContextualRelation(weight="auto")
    p.configure_auto(share=0.5, warmup=2)
    assert math.isnan(p.weight) and p.is_active and not p.auto_resolved
    p.auto_observe(2.0, 4.0)
    assert p.weight == pytest.approx(0.5 * 2.0 / 4.0)
    p.auto_observe(4.0, 2.0)  # means 3 and 3
    assert p.auto_resolved and p.weight == pytest.approx(0.5)
    p.auto_observe(100.0, 1.0)  # after the warm-up: ignored
    assert p.weight == pytest.approx(0.5)
    q = GlobalContextualRelation(weight="auto")
    q.load_state_dict(p.state_dict())
    q.configure_auto(share=0.5, warmup=2)
    assert q.auto_resolved and q.weight == pytest.approx(0.5)


def test_fixed_weight_plugins_keep_their_state_dict_keys():
    p = AtomicContrastive(weight=0.3, embed_dim=4)
    p.setup(5, 4, C)
    assert "auto_state" not in p.state_dict() and p.weight == 0.3 and not p.auto
