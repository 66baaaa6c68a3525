"""Distillation plugins (DESIGN.md §3): values against naive loop references and hand
computations, golden values, minima, masking, gradients, invariances, bf16, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from torch import Tensor

import kd_detect.distill as D
from kd_detect.distill import (
    CRD,
    PKT,
    RKD,
    AtomicContrastive,
    AttentionTransfer,
    BoundarySaliency,
    DistillationLoss,
    FeatureMSE,
    FitNets,
    GlobalContextualRelation,
    LogitKD,
    SimilarityPreserving,
)
from kd_detect.distill.atomic import atom_index
from kd_detect.distill.global_relation import relation_kl
from kd_detect.models.heads.base import HeadOutput

torch.set_num_threads(1)
C = 3

# every plugin configuration under test: id -> factory (small max_* so sampling is exercised)
CONFIGS = {
    "atomic": lambda: AtomicContrastive(tau=0.2),
    "atomic_w1_sym_mlp": lambda: AtomicContrastive(window=1, symmetric=True, projector="mlp", embed_dim=8),
    "atomic_w3_sampled": lambda: AtomicContrastive(window=3, max_atoms=3, embed_dim=8),
    "global_kl": lambda: GlobalContextualRelation(tau_r=0.2, chunk_size=2),
    "global_gram": lambda: GlobalContextualRelation(mode="gram"),
    "boundary_kl": lambda: BoundarySaliency(tau_b=0.3),
    "boundary_kl_strides": lambda: BoundarySaliency(strides=(1, 2, 4), tau_b=0.3),
    "boundary_l2": lambda: BoundarySaliency(mode="l2", strides=(1, 2)),
    "boundary_kl_raw": lambda: BoundarySaliency(dim_scale=False, tau_b=1.0),
    "boundary_kl_video": lambda: BoundarySaliency(strides=(1, 2), scale="video", tau_b=0.7),
    "logit_kd": lambda: LogitKD(tau=2.0),
    "fitnets": lambda: FitNets(),
    "mars": lambda: FeatureMSE(),
    "at": lambda: AttentionTransfer(),
    "sp": lambda: SimilarityPreserving(chunk_size=3),
    "rkd": lambda: RKD(max_samples=5),
    "pkt": lambda: PKT(max_samples=7),
    "crd": lambda: CRD(max_samples=6, embed_dim=8),
}
SHAPES = [(1, 1), (2, 3), (3, 7), (2, 16)]  # (B, T): T=1, T < window, odd T, longer
DIMS = [(6, 6), (6, 4)]  # (F_s, F_t)
MASKS = ["full", "ragged"]


def make_mask(B: int, T: int, kind: str) -> Tensor:
    mask = torch.ones(B, T, dtype=torch.bool)
    if kind == "holes":  # not produced by the data module, but nothing assumes prefix masks
        mask[:, 1::3] = False
        mask[-1, :2] = False
    if kind == "ragged":
        lengths = [T, max(1, T - 2), 1, max(1, (T + 1) // 2)]
        for b in range(B):
            mask[b, lengths[(b + 1) % len(lengths)] :] = False
    return mask


def make_inputs(B, T, Fs, Ft, mask_kind, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask(B, T, mask_kind)
    sf = torch.randn(B, Fs, T, generator=g, dtype=dtype)
    sl = 2 * torch.randn(B, C, T, generator=g, dtype=dtype)
    tf = torch.randn(B, Ft, T, generator=g, dtype=dtype)
    tl = 2 * torch.randn(B, C, T, generator=g, dtype=dtype)
    m = mask[:, None, :].to(dtype)  # heads output zeros on padding
    return HeadOutput(sf * m, sl * m), HeadOutput(tf * m, tl * m), mask


def build(name: str, Fs: int, Ft: int, seed: int = 0, double: bool = True) -> DistillationLoss:
    torch.manual_seed(seed)
    p = CONFIGS[name]()
    p.setup(Fs, Ft, C)
    return p.double() if double else p


def leaf(h: HeadOutput) -> HeadOutput:
    return HeadOutput(h.features.clone().requires_grad_(True), h.logits.clone().requires_grad_(True))


# ------------------------------------------------------------------ naive references
def smooth_l1(x: Tensor) -> Tensor:
    return torch.where(x.abs() < 1, 0.5 * x**2, x.abs() - 0.5)


def nrm(v: Tensor) -> Tensor:
    n = v.norm()
    return v / n if n > 0 else v


def valid_idx(mask: Tensor, b: int) -> list[int]:
    return [t for t in range(mask.shape[1]) if mask[b, t]]


def rows_b_major(x: Tensor, mask: Tensor) -> list[Tensor]:
    return [x[b, :, t] for b in range(x.shape[0]) for t in valid_idx(mask, b)]


def sample_like_plugin(n: int, k: int) -> list[int]:
    """The documented sampling: uniform without replacement from the torch global RNG."""
    return list(range(n)) if k <= 0 or n <= k else torch.randperm(n)[:k].tolist()


def ref_infonce(q: list[Tensor], k: list[Tensor], tau: float, symmetric: bool) -> Tensor:
    def one(a, b):
        tot = 0.0
        for i in range(len(a)):
            logits = torch.stack([a[i] @ b[j] / tau for j in range(len(b))])
            tot = tot - (logits[i] - torch.logsumexp(logits, 0))
        return tot / len(a)

    return 0.5 * (one(q, k) + one(k, q)) if symmetric else one(q, k)


def ref_atomic(p, s: HeadOutput, t: HeadOutput, mask: Tensor, seed: int) -> Tensor:
    sa, ta = [], []
    for b in range(mask.shape[0]):
        idx = valid_idx(mask, b)
        for k in range(0, len(idx), p.window):
            w = idx[k : k + p.window]
            sa.append(s.features[b][:, w].mean(1))
            ta.append(t.features[b][:, w].mean(1))
    torch.manual_seed(seed)
    pick = sample_like_plugin(len(sa), p.max_atoms)
    q = [nrm(p.proj_s(sa[i])) for i in pick]
    k = [nrm(p.proj_t(ta[i])) for i in pick]
    return ref_infonce(q, k, p.tau, p.symmetric)


def ref_global(p, s, t, mask, seed) -> Tensor:
    tot, rows, per_video = 0.0, 0, []
    for b in range(mask.shape[0]):
        idx = valid_idx(mask, b)
        if not idx:
            continue
        S = F.normalize(s.features[b][:, idx], dim=0)
        Fm = F.normalize(t.features[b][:, idx], dim=0)
        if p.mode == "gram":
            per_video.append(((S.T @ S - Fm.T @ Fm) ** 2).sum() / len(idx) ** 2)
            continue
        for i in range(len(idx)):
            ls = torch.log_softmax(S[:, i] @ S / p.tau_r, 0)
            lf = torch.log_softmax(Fm[:, i] @ Fm / p.tau_r, 0)
            tot = tot + (lf.exp() * (lf - ls)).sum()
            rows += 1
    if p.mode == "gram":
        return torch.stack(per_video).mean()
    return tot / rows


def ref_saliency(x: Tensor, mask: Tensor, b: int, strides, dim_scale: bool) -> dict[int, Tensor]:
    xh = F.normalize(x[b], dim=0)
    out = {}
    for t in range(x.shape[-1]):
        ds = [
            (xh[:, t] - xh[:, t - k]).abs().sum() / (math.sqrt(x.shape[1]) if dim_scale else 1.0)
            for k in strides
            if t - k >= 0 and mask[b, t] and mask[b, t - k]
        ]
        if ds:
            out[t] = sum(ds) / len(ds)
    return out


def ref_boundary(p, s, t, mask, seed) -> Tensor:
    per_video = []
    for b in range(mask.shape[0]):
        bs = ref_saliency(s.features, mask, b, p.strides, p.dim_scale)
        bf = ref_saliency(t.features, mask, b, p.strides, p.dim_scale)
        if not bs:
            continue
        vs, vf = torch.stack(list(bs.values())), torch.stack(list(bf.values()))
        if p.mode == "kl":
            if p.scale == "video":  # population std; zero spread -> all 0
                z = lambda v: (v - v.mean()) / v.std(unbiased=False) if float(v.std(unbiased=False)) > 1e-8 else v * 0  # noqa: E731
                vs, vf = z(vs), z(vf)
            ps, pf = torch.softmax(vs / p.tau_b, 0), torch.softmax(vf / p.tau_b, 0)
            per_video.append((pf * torch.log(pf / ps)).sum())
        else:
            mm = lambda v: (v - v.min()) / max(float(v.max() - v.min()), 1e-6)  # noqa: E731
            per_video.append(((mm(vs) - mm(vf)) ** 2).mean())
    return torch.stack(per_video).mean() if per_video else torch.zeros((), dtype=torch.float64)


def ref_logit_kd(p, s, t, mask, seed) -> Tensor:
    vals = []
    for b in range(mask.shape[0]):
        for tt in valid_idx(mask, b):
            for c in range(C):
                pt = torch.sigmoid(t.logits[b, c, tt] / p.tau)
                q = torch.sigmoid(s.logits[b, c, tt] / p.tau)
                vals.append(pt * torch.log(pt / q) + (1 - pt) * torch.log((1 - pt) / (1 - q)))
    return p.tau**2 * torch.stack(vals).mean()


def ref_feature_mse(p, s, t, mask, seed) -> Tensor:
    if isinstance(p, FitNets):
        W, bias = p.regressor.weight[:, :, 0], p.regressor.bias
        fmap = lambda v: W @ v + bias  # noqa: E731
    elif isinstance(p.proj, torch.nn.Conv1d):
        fmap = lambda v: p.proj.weight[:, :, 0] @ v  # noqa: E731
    else:
        fmap = lambda v: v  # noqa: E731
    errs = [((fmap(a) - c) ** 2).mean() for a, c in zip(rows_b_major(s.features, mask), rows_b_major(t.features, mask))]
    return torch.stack(errs).mean()


def ref_at(p, s, t, mask, seed) -> Tensor:
    per_video = []
    for b in range(mask.shape[0]):
        idx = valid_idx(mask, b)
        if idx:
            a_s = nrm((s.features[b][:, idx] ** 2).mean(0))
            a_f = nrm((t.features[b][:, idx] ** 2).mean(0))
            per_video.append(((a_s - a_f) ** 2).sum())
    return torch.stack(per_video).mean()


def ref_sp(p, s, t, mask, seed) -> Tensor:
    per_video = []
    for b in range(mask.shape[0]):
        idx = valid_idx(mask, b)
        if idx:
            gs = F.normalize(s.features[b][:, idx].T @ s.features[b][:, idx], dim=1)
            gf = F.normalize(t.features[b][:, idx].T @ t.features[b][:, idx], dim=1)
            per_video.append(((gs - gf) ** 2).sum() / len(idx) ** 2)
    return torch.stack(per_video).mean()


def ref_rkd(p, s, t, mask, seed) -> Tensor:
    rs, rt = rows_b_major(s.features, mask), rows_b_major(t.features, mask)
    torch.manual_seed(seed)
    pick = sample_like_plugin(len(rs), p.max_samples)
    es, et = [rs[i] for i in pick], [rt[i] for i in pick]
    n = len(es)
    if n < 2:
        return torch.zeros((), dtype=torch.float64)

    def dist(e):
        d = torch.stack([torch.stack([(e[i] - e[j]).norm() for j in range(n)]) for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))

    loss = p.distance_weight * smooth_l1(dist(es) - dist(et)).mean()
    if n >= 3:
        ang = lambda e, i, j, k: nrm(e[i] - e[j]) @ nrm(e[k] - e[j])  # noqa: E731
        terms = [smooth_l1(ang(es, i, j, k) - ang(et, i, j, k)) for i in range(n) for j in range(n) for k in range(n)]
        loss = loss + p.angle_weight * torch.stack(terms).mean()
    return loss


def ref_pkt(p, s, t, mask, seed) -> Tensor:
    rs, rt = rows_b_major(s.features, mask), rows_b_major(t.features, mask)
    torch.manual_seed(seed)
    pick = sample_like_plugin(len(rs), p.max_samples)

    def cond(e):
        k = torch.stack([torch.stack([(F.cosine_similarity(a, c, dim=0) + 1) / 2 for c in e]) for a in e])
        return k / k.sum(1, keepdim=True)

    ps, pt = cond([rs[i] for i in pick]), cond([rt[i] for i in pick])
    return (pt * torch.log((pt + p.eps) / (ps + p.eps))).sum(1).mean()


REFS = {
    AtomicContrastive: ref_atomic,
    CRD: ref_atomic,
    GlobalContextualRelation: ref_global,
    BoundarySaliency: ref_boundary,
    LogitKD: ref_logit_kd,
    FitNets: ref_feature_mse,
    FeatureMSE: ref_feature_mse,
    AttentionTransfer: ref_at,
    SimilarityPreserving: ref_sp,
    RKD: ref_rkd,
    PKT: ref_pkt,
}


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("mask_kind", [*MASKS, "holes"])
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_naive_reference(name, shape, dims, mask_kind):
    (B, T), (Fs, Ft) = shape, dims
    p = build(name, Fs, Ft)
    s, t, mask = make_inputs(B, T, Fs, Ft, mask_kind)
    torch.manual_seed(123)
    got = p(s, t, mask)
    with torch.no_grad():
        want = REFS[type(p)](p, s, t, mask, 123) if mask.any() else 0.0
    assert got.dtype == torch.float64 and got.dim() == 0
    torch.testing.assert_close(got.detach(), torch.as_tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-11)


def test_atomic_by_hand():
    """Two atoms of window 2 with identity heads: logits diag(1/τ) → CE = log(1 + e^{−1/τ})."""
    p = AtomicContrastive(window=2, embed_dim=2, tau=0.5)
    p.setup(2, 2, 1)
    with torch.no_grad():
        for lin in (p.proj_s, p.proj_t):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    s = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]]])  # atoms [1,0], [0,2]
    t = torch.tensor([[[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 5.0]]])  # atoms [1,0], [0,5]
    loss = p(HeadOutput(s, s[:, :1]), HeadOutput(t, t[:, :1]), torch.ones(1, 4, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    p.symmetric = True  # symmetric logits: the teacher→student term is equal
    assert p(HeadOutput(s, s[:, :1]), HeadOutput(t, t[:, :1]), torch.ones(1, 4, dtype=torch.bool)).item() == pytest.approx(
        math.log(1 + math.exp(-2.0)), rel=1e-6
    )


def test_atom_index_counts_valid_steps_only():
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    ids, n = atom_index(mask, 2)
    # video 0: valid steps 0,2 | 3,5 | 6 ; video 1: 0,1 | 2 ; video 2: none
    assert ids.tolist() == [0, 0, 1, 1, 2, 3, 3, 4] and n == 5


def test_global_by_hand():
    """ŝ = e1, e2; f̂ = e1, e1 (τ=1): R_F rows uniform, R_S rows (σ(1), σ(−1)); gram: ‖I − 𝟙‖²/4."""
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    f = torch.tensor([[[3.0, 0.5], [0.0, 0.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want_kl = -math.log(2) - 0.5 * math.log(sig(1) * sig(-1))
    for chunk in (1, 2):
        p = GlobalContextualRelation(tau_r=1.0, chunk_size=chunk)
        p.setup(2, 2, 1)
        assert p(HeadOutput(s, s), HeadOutput(f, f), mask).item() == pytest.approx(want_kl, rel=1e-6)
    p = GlobalContextualRelation(mode="gram")
    p.setup(2, 2, 1)
    assert p(HeadOutput(s, s), HeadOutput(f, f), mask).item() == pytest.approx(0.5, rel=1e-6)


def test_boundary_by_hand():
    """Student changes at t=2, teacher at t=1 (F=2): b_S = (0, 2), b_F = (2, 0) (÷√2 with
    ``dim_scale``), so with ``c`` the logit gap, KL = c·tanh(c/2)."""
    s = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]])  # x̂: e1, e1, e2 → b = [_, 0, 2]
    f = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 3.0, 1.0]]])  # x̂: e1, e2, e2 → b = [_, 2, 0]
    mask = torch.ones(1, 3, dtype=torch.bool)
    for dim_scale, tau in ((True, 1.0), (False, 2.0)):
        c = (2 / math.sqrt(2) if dim_scale else 2.0) / tau  # the logit gap between the two steps
        p = BoundarySaliency(tau_b=tau, dim_scale=dim_scale)
        p.setup(2, 2, 1)
        # p_F = (σ(c), σ(−c)), p_S = (σ(−c), σ(c)) → KL = (2σ(c) − 1)·c = c·tanh(c/2)
        assert p(HeadOutput(s, s), HeadOutput(f, f), mask).item() == pytest.approx(c * math.tanh(c / 2), rel=1e-6)
    p = BoundarySaliency(mode="l2")
    p.setup(2, 2, 1)  # min-max: (0, 1) vs (1, 0) → mean squared difference 1
    assert p(HeadOutput(s, s), HeadOutput(f, f), mask).item() == pytest.approx(1.0, rel=1e-6)


def test_boundary_video_scale_keeps_where_not_how_much():
    """``scale="video"``: two defined steps standardise to (−1, 1) whatever their size, so the
    logit gap is 2/τ and KL = c·tanh(c/2) with c = 2/τ, for a teacher whose change is full
    (b_F = (2, 0)/√2) or about a quarter as large; with ``raw`` the two teachers give different losses."""
    s = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]])  # b_S = [_, 0, 2]/√2
    f_big = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 3.0, 1.0]]])  # b_F = [_, 2, 0]/√2
    f_small = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.5, 0.5]]])  # b_F ≈ [_, 0.39, 0]: a smaller turn at t=1, none at t=2
    mask = torch.ones(1, 3, dtype=torch.bool)
    c = 2 / 0.5
    video, raw = BoundarySaliency(tau_b=0.5, scale="video"), BoundarySaliency(tau_b=0.5)
    for p in (video, raw):
        p.setup(2, 2, 1)
    for f in (f_big, f_small):
        assert video(HeadOutput(s, s), HeadOutput(f, f), mask).item() == pytest.approx(c * math.tanh(c / 2), rel=1e-6)
    big, small = (raw(HeadOutput(s, s), HeadOutput(f, f), mask).item() for f in (f_big, f_small))
    assert big > small * 1.5
    # a student whose own changes are larger or smaller, at the same steps, costs the same
    s_half = torch.tensor([[[1.0, 2.0, 1.0], [0.0, 0.0, 0.4]]])
    assert video(HeadOutput(s_half, s_half), HeadOutput(f_big, f_big), mask).item() == pytest.approx(
        c * math.tanh(c / 2), rel=1e-6)
    with pytest.raises(ValueError):
        BoundarySaliency(mode="l2", scale="video")
    with pytest.raises(ValueError):
        BoundarySaliency(scale="per-step")  # type: ignore[arg-type]


def test_logit_kd_by_hand():
    p = LogitKD(tau=2.0)
    p.setup(1, 1, 1)
    zs, zt = torch.tensor([[[0.0]]]), torch.tensor([[[2.0 * math.log(3.0)]]])  # q = 1/2, p = 3/4
    want = 4.0 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    out = p(HeadOutput(zs, zs), HeadOutput(zt, zt), torch.ones(1, 1, dtype=torch.bool))
    assert out.item() == pytest.approx(want, rel=1e-6)


GOLDEN = {
    "atomic": 1.5628559589385986,
    "atomic_w1_sym_mlp": 3.309882164001465,
    "atomic_w3_sampled": 1.5270791053771973,
    "global_kl": 1.0193088054656982,
    "global_gram": 0.2634972631931305,
    "boundary_kl": 0.8414112329483032,
    "boundary_kl_strides": 0.3015989661216736,
    "boundary_l2": 0.15818172693252563,
    "boundary_kl_raw": 0.4319634735584259,
    "boundary_kl_video": 1.253594160079956,
    "logit_kd": 1.1065609455108643,
    "fitnets": 1.062573790550232,
    "mars": 1.0174062252044678,
    "at": 0.33363762497901917,
    "sp": 0.12345033884048462,
    "rkd": 0.14654168486595154,
    "pkt": 0.1335291862487793,
    "crd": 2.895669460296631,
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_golden_value(name):
    """Regression guard (torchdistill style): fp32, fixed seeds, ragged mask, F_s ≠ F_t."""
    p = build(name, 6, 5, seed=7, double=False)
    s, t, mask = make_inputs(3, 10, 6, 5, "ragged", seed=11, dtype=torch.float32)
    torch.manual_seed(5)
    got = p(s, t, mask).item()
    assert got == pytest.approx(GOLDEN[name], rel=2e-5, abs=1e-7)


# ------------------------------------------------------------------ behaviour
ZERO_AT_IDENTITY = [
    "global_kl",
    "global_gram",
    "boundary_kl",
    "boundary_kl_strides",
    "boundary_l2",
    "boundary_kl_video",
    "logit_kd",
    "mars",
    "at",
    "sp",
    "rkd",
    "pkt",
]


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", ZERO_AT_IDENTITY)
def test_zero_when_student_equals_teacher(name, mask_kind):
    p = build(name, 6, 6)
    s, t, mask = make_inputs(3, 9, 6, 6, mask_kind)
    assert p(s, t, mask).item() > 1e-4  # distinct inputs are penalised ...
    assert abs(p(s, s, mask).item()) < 1e-10  # ... identical ones are not


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", ["atomic", "atomic_w1_sym_mlp", "crd"])
def test_contrastive_prefers_aligned_pairs(name, mask_kind):
    p = build(name, 6, 6)
    p.proj_t.load_state_dict(p.proj_s.state_dict())  # same head on both sides
    s, _, mask = make_inputs(3, 12, 6, 6, mask_kind)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    shuffled = HeadOutput(s.features[:, :, perm].roll(1, 0) * mask[:, None], s.logits)
    torch.manual_seed(0)
    aligned = p(s, s, mask).item()
    torch.manual_seed(0)
    assert aligned < p(s, shuffled, mask).item()


def pad_with_garbage(h: HeadOutput, extra: int, value: float) -> HeadOutput:
    def pad(x):
        g = torch.full((*x.shape[:2], extra), value, dtype=x.dtype)
        g[..., ::2] = 1e4 * torch.randn(*x.shape[:2], len(range(0, extra, 2)), dtype=x.dtype)
        return torch.cat([x, g], -1)

    return HeadOutput(pad(h.features), pad(h.logits))


@pytest.mark.parametrize("garbage", [float("nan"), 123.0])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_changes_nothing(name, garbage):
    p = build(name, 6, 4)
    s, t, mask = make_inputs(3, 7, 6, 4, "ragged")
    s1 = leaf(s)
    torch.manual_seed(3)
    ref = p(s1, t, mask)
    ref.backward()
    s2 = leaf(pad_with_garbage(s, 5, garbage))
    t2 = pad_with_garbage(t, 5, garbage)
    # garbage also inside the existing padding
    m_old = (~mask)[:, None, :]
    s2.features.data[:, :, :7][m_old.expand_as(s.features)] = garbage
    t2.features[:, :, :7][m_old.expand_as(t.features)] = garbage
    mask2 = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1)
    torch.manual_seed(3)
    out = p(s2, t2, mask2)
    out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in ((s1.features, s2.features), (s1.logits, s2.logits)):
        if a.grad is not None:
            torch.testing.assert_close(b.grad[..., :7], a.grad)
            assert torch.all(b.grad[..., 7:] == 0)


def rebase_each_video(t: HeadOutput, seed: int = 0) -> HeadOutput:
    """Each video's teacher features in another basis: a signed permutation of the feature
    axes, a different one per video (what a cross-fitted teacher's fold networks may do)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.empty_like(t.features)
    for b in range(feats.shape[0]):
        perm = torch.randperm(feats.shape[1], generator=g)
        sign = torch.randint(0, 2, (feats.shape[1], 1), generator=g).to(feats.dtype) * 2 - 1
        feats[b] = sign * t.features[b, perm]
    return HeadOutput(feats, t.logits)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_view_says_whether_each_videos_teacher_basis_matters(name):
    """``teacher_view`` "logits"/"video": the loss is the same when every video's teacher
    features are in a basis of their own, and nothing is learnt on the teacher's side;
    "space": it changes (so the label is not vacuous)."""
    p = build(name, 6, 4)
    s, t, mask = make_inputs(3, 7, 6, 4, "ragged")
    torch.manual_seed(3)
    same = p(s, t, mask)
    torch.manual_seed(3)
    rebased = p(s, rebase_each_video(t), mask)
    assert p.teacher_view in ("logits", "video", "space")
    if p.teacher_view == "space":
        assert not torch.allclose(rebased, same)
    else:
        torch.testing.assert_close(rebased, same, rtol=1e-12, atol=1e-12)
        assert not list(p.parameters())


RELEVANT = {"logit_kd": "logits"}


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_student_and_plugin_never_teacher(name, dims):
    Fs, Ft = dims
    p = build(name, Fs, Ft)
    s, t, mask = make_inputs(3, 8, Fs, Ft, "ragged")
    s, t = leaf(s), leaf(t)
    torch.manual_seed(0)
    p(s, t, mask).backward()
    used = RELEVANT.get(name, "features")
    g = getattr(s, used).grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.all(g * (~mask)[:, None, :] == 0)  # padded steps get no gradient
    other = s.logits if used == "features" else s.features
    assert other.grad is None
    assert t.features.grad is None and t.logits.grad is None
    for n, prm in p.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, n
    expect_params = name.startswith(("atomic", "crd")) or name == "fitnets" or (name == "mars" and Fs != Ft)
    assert bool(list(p.parameters())) == expect_params


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith(("global", "boundary"))])
def test_invariant_to_positive_per_step_scaling(name):
    p = build(name, 6, 4)
    s, t, mask = make_inputs(2, 11, 6, 4, "ragged")
    g = torch.Generator().manual_seed(4)
    scale = lambda h: HeadOutput(h.features * torch.exp(2 * torch.randn(2, 1, 11, generator=g, dtype=h.features.dtype)), h.logits)  # noqa: E731
    torch.testing.assert_close(p(scale(s), scale(t), mask), p(s, t, mask), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mask_kind", MASKS)
def test_global_kl_chunking_is_exact(mask_kind):
    s, t, mask = make_inputs(3, 13, 6, 4, mask_kind)
    outs, grads = [], []
    for chunk in (1, 2, 5, 13, 1000):
        p = GlobalContextualRelation(tau_r=0.1, chunk_size=chunk)
        p.setup(6, 4, C)
        sl = leaf(s)
        out = p(sl, t, mask)
        out.backward()
        outs.append(out)
        grads.append(sl.features.grad)
    for o, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(o, outs[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g, grads[0], rtol=1e-10, atol=1e-14)


def test_global_kl_hand_written_backward_matches_finite_differences():
    s, t, mask = make_inputs(2, 6, 3, 4, "ragged")
    m = mask[:, None, :]
    fn = lambda a, b: relation_kl(F.normalize(a, dim=1) * m, F.normalize(b, dim=1) * m, mask, 0.3, 4)  # noqa: E731
    # both inputs differentiable: the student path and the (normally unused) teacher path
    assert torch.autograd.gradcheck(fn, (s.features.clone().requires_grad_(), t.features.clone().requires_grad_()))


@pytest.mark.parametrize("T", [5, 40])
def test_gram_mode_equals_explicit_txt(T):
    s, t, mask = make_inputs(2, T, 7, 3, "ragged", seed=2)
    p = GlobalContextualRelation(mode="gram")
    p.setup(7, 3, C)
    got = p(s, t, mask)
    want = []
    for b in range(2):
        n = int(mask[b].sum())
        S = F.normalize(s.features[b, :, :n], dim=0)
        Fm = F.normalize(t.features[b, :, :n], dim=0)
        want.append(torch.linalg.matrix_norm(S.T @ S - Fm.T @ Fm) ** 2 / n**2)
    torch.testing.assert_close(got, torch.stack(want).mean(), rtol=1e-10, atol=1e-12)
    assert p(s, s, mask).item() >= 0.0  # cancellation never goes negative


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("boundary")])
def test_boundary_videos_without_pairs_contribute_nothing(name):
    p = build(name, 5, 4)
    s, t, mask = make_inputs(3, 6, 5, 4, "full")
    mask[1, 1:] = False  # one valid step: no pair
    mask[2, :] = False  # nothing valid
    sl = leaf(s)
    out = p(sl, t, mask)
    out.backward()
    only = p(HeadOutput(s.features[:1], s.logits[:1]), HeadOutput(t.features[:1], t.logits[:1]), mask[:1])
    torch.testing.assert_close(out, only)
    sl = leaf(s)
    zero = p(sl, t, torch.zeros_like(mask).index_fill_(1, torch.tensor([0]), True))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(sl.features.grad).all()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_padding_gives_attached_zero(name):
    p = build(name, 6, 4)
    s, t, mask = make_inputs(2, 5, 6, 4, "full")
    sl = leaf(s)
    out = p(sl, t, torch.zeros_like(mask))
    out.backward()
    assert out.item() == 0.0


@pytest.mark.parametrize("name", ["atomic_w3_sampled", "rkd", "pkt", "crd"])
def test_sampling_is_reproducible_under_seed(name):
    p = build(name, 6, 4)
    s, t, mask = make_inputs(3, 16, 6, 4, "full")
    vals = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        vals.append(p(s, t, mask).item())
    assert vals[0] == vals[1] and vals[0] != vals[2]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_autocast_is_finite(name):
    p = build(name, 16, 12, double=False)
    s, t, mask = make_inputs(3, 20, 16, 12, "ragged", dtype=torch.float32)
    # realistic bf16 head outputs, with large magnitudes to stress exp/log
    s = HeadOutput((50 * s.features).bfloat16().requires_grad_(), (20 * s.logits).bfloat16().requires_grad_())
    t = HeadOutput((50 * t.features).bfloat16(), (20 * t.logits).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = p(s, t, mask)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    for x in (s.features.grad, s.logits.grad, *(q.grad for q in p.parameters())):
        assert x is None or torch.isfinite(x).all()


# ------------------------------------------------------------------ naming & config
PLUGINS = {  # the one naming system: class_path; short names here are only test ids
    "atomic": AtomicContrastive, "global": GlobalContextualRelation, "boundary": BoundarySaliency,
    "logit_kd": LogitKD, "fitnets": FitNets, "mars": FeatureMSE, "at": AttentionTransfer,
    "sp": SimilarityPreserving, "rkd": RKD, "pkt": PKT, "crd": CRD,
}
MODULE_OF = {"atomic": "atomic", "global": "global_relation", "boundary": "boundary", "logit_kd": "logit_kd",
             "fitnets": "feature_kd", "mars": "feature_kd", "at": "feature_kd", "sp": "relational",
             "rkd": "relational", "pkt": "relational", "crd": "crd"}


def test_every_public_plugin_is_exported_and_listed():
    exported = {n for n in D.__all__ if isinstance(getattr(D, n), type) and issubclass(getattr(D, n), DistillationLoss)}
    concrete = {n for n in exported if n not in ("DistillationLoss", "InBatchContrastive")}
    assert concrete == {cls.__name__ for cls in PLUGINS.values()}
    for cls in PLUGINS.values():
        assert getattr(D, cls.__name__) is cls and cls.__doc__ and "DESIGN.md §3" in cls.__doc__
    assert not hasattr(D, "REGISTRY") and not hasattr(D, "register")  # one naming system


def test_crd_does_not_import_the_methods_atomic_module():
    import kd_detect.distill.crd as crd_module

    source = open(crd_module.__file__).read()
    assert "distill.atomic" not in source and CRD.__mro__[1].__module__ == "kd_detect.distill._contrastive"


KNOBS = {
    "atomic": {"window": 2, "projector": "mlp", "symmetric": True, "max_atoms": 10, "exclude_same_label": True,
               "negatives": "video"},
    "global": {"mode": "gram", "tau_r": 0.05, "chunk_size": 64, "center": True},
    "boundary": {"strides": [1, 2, 4], "mode": "kl", "tau_b": 0.2, "center": True, "scale": "video"},
    "logit_kd": {"tau": 4.0},
    "sp": {"chunk_size": 8},
    "rkd": {"max_samples": 16, "angle_weight": 0.0},
    "pkt": {"max_samples": 32},
    "crd": {"tau": 0.1, "max_samples": 64},
}


def _from_yaml(class_path: str, init_args: dict):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(DistillationLoss, "p")
    cfg = parser.parse_object({"p": {"class_path": class_path, "init_args": init_args}})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg).p


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_instantiates_from_class_path_config(name):
    cls = PLUGINS[name]
    init_args = {"weight": 0.25, **KNOBS.get(name, {})}
    for path in (f"kd_detect.distill.{cls.__name__}", f"kd_detect.distill.{MODULE_OF[name]}.{cls.__name__}"):
        obj = _from_yaml(path, init_args)
        assert type(obj) is cls and obj.weight == 0.25
        for k, v in KNOBS.get(name, {}).items():
            got = getattr(obj, k)
            assert got == (tuple(v) if isinstance(v, list) else v), k
        obj.setup(8, 6, C)
        s, t, mask = make_inputs(2, 9, 8, 6, "ragged", dtype=torch.float32)
        labels = (torch.rand(2, C, 9) > 0.5).float()
        assert torch.isfinite(obj(s, t, mask, labels))


def test_boundary_l2_mode_parses_from_yaml():
    """KNOBS sets boundary ``scale: video`` (kl only), so the ``l2`` mode is parsed here."""
    obj = _from_yaml("kd_detect.distill.BoundarySaliency", {"mode": "l2", "tau_b": 0.3, "strides": [1, 2]})
    assert (obj.mode, obj.tau_b, obj.strides) == ("l2", 0.3, (1, 2))
    obj.setup(8, 6, C)
    s, t, mask = make_inputs(2, 9, 8, 6, "ragged", dtype=torch.float32)
    assert torch.isfinite(obj(s, t, mask, None))
    with pytest.raises(ValueError):
        _from_yaml("kd_detect.distill.BoundarySaliency", {"mode": "l2", "scale": "video"})


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_weight_auto_parses_for_every_plugin(name):
    obj = _from_yaml(f"kd_detect.distill.{PLUGINS[name].__name__}", {"weight": "auto"})
    assert obj.auto and obj.is_active and math.isnan(obj.weight) and "auto_state" in obj.state_dict()


def test_bad_options_are_rejected():
    with pytest.raises(ValueError):
        AtomicContrastive(projector="conv")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GlobalContextualRelation(mode="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BoundarySaliency(strides=(0,))
    with pytest.raises(RuntimeError):
        GlobalContextualRelation()(*make_inputs(1, 3, 2, 2, "full"))
