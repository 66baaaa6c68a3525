"""Detection heads (DESIGN.md §2): shapes, masking, reference structure, receptive fields."""

from __future__ import annotations

import pytest
import torch

from kd_detect.models.heads import MSTCN, PDAN, TCN, Decomposed, DetectionHead, HeadOutput
from kd_detect.models.heads.pdan import DilatedAttention

torch.set_num_threads(1)

# Small configurations so the suite stays fast; the structure is the same as the defaults.
SMALL = {
    "pdan": lambda d, c: PDAN(d, c, hidden=16, num_layers=3),
    "pdan_k5": lambda d, c: PDAN(d, c, hidden=16, num_layers=3, input_kernel=5),
    "mstcn": lambda d, c: MSTCN(d, c, num_stages=2, num_layers=3, hidden=8),
    "tcn": lambda d, c: TCN(d, c, hidden=8, num_layers=2, kernel_size=3),
    "decomposed": lambda d, c: Decomposed(d, c, hidden=16, num_layers=3),
    "decomposed_k3": lambda d, c: Decomposed(d, c, hidden=16, num_layers=3, input_kernel=3),
}
# One-sided receptive field of the SMALL configurations, in steps.
RECEPTIVE = {"pdan": 1 + 2 + 4, "pdan_k5": 2 + 1 + 2 + 4, "decomposed": 1 + 2 + 4,
             "decomposed_k3": 1 + 1 + 2 + 4, "mstcn": 2 * (1 + 2 + 4), "tcn": 2 * 1}


def make(name: str, d: int, c: int, seed: int = 0) -> DetectionHead:
    torch.manual_seed(seed)
    return SMALL[name](d, c).eval()


def lengths_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]


def test_pdan_parameter_count_matches_reference() -> None:
    # Reference single-stage PDAN (dairui01/PDAN, PDAN.py), D=1024, C=157, 512 maps, 5 blocks:
    #   conv_1x1 D->512 (bias):             1024*512 + 512           =   524,800
    #   per block: DAL rel_t (512,1,3)       512*3                    =     1,536
    #              key/query/value 1x1 convs without bias  3*512*512  =   786,432
    #              block conv_1x1 (bias)     512*512 + 512            =   262,656
    #              block total                                        = 1,050,624
    #   5 blocks                                                      = 5,253,120
    #   conv_out 512->157 (bias):           512*157 + 157            =    80,541
    #   total                                                         = 5,858,461  (the paper's "5.8M")
    head = PDAN(1024, 157)
    assert sum(p.numel() for p in head.parameters()) == 5_858_461
    assert head.feature_dim == 512 and len(head.blocks) == 5
    assert [b.attention.dilation for b in head.blocks] == [1, 2, 4, 8, 16]


def test_mstcn_and_tcn_parameter_counts() -> None:
    # MS-TCN stage (in, H, C, L layers): conv_in in*H+H; per layer dilated 3*H*H+H and 1x1 H*H+H; conv_out H*C+C.
    d, c, h, layers = 1024, 157, 64, 10
    stage = lambda i: i * h + h + layers * (3 * h * h + h + h * h + h) + h * c + c  # noqa: E731
    assert sum(p.numel() for p in MSTCN(d, c).parameters()) == stage(d) + stage(c)
    # TCN: first conv d*H*k+H, then (L-1) convs H*H*k+H, classifier H*C+C.
    k, h, layers = 5, 32, 3
    expected = d * h * k + h + (layers - 1) * (h * h * k + h) + h * c + c
    assert sum(p.numel() for p in TCN(d, c, hidden=h, num_layers=layers, kernel_size=k).parameters()) == expected


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("b,t,d,c", [(1, 1, 3, 1), (2, 7, 5, 4), (3, 40, 16, 2), (2, 1, 16, 3)])
def test_shapes_and_zero_padding(name: str, b: int, t: int, d: int, c: int) -> None:
    head = make(name, d, c)
    lengths = [t] + [max(1, t - 1 - i) for i in range(b - 1)]
    mask = lengths_mask(lengths, t)
    out = head(torch.randn(b, d, t), mask)
    assert isinstance(out, HeadOutput)
    assert out.features.shape == (b, head.feature_dim, t)
    assert out.logits.shape == (b, c, t)
    pad = ~mask.unsqueeze(1)
    assert (out.features.masked_select(pad) == 0).all() and (out.logits.masked_select(pad) == 0).all()


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("lengths,extra", [([1, 1], 3), ([9, 4, 6], 5), ([30], 17)])
def test_padding_never_influences_valid_steps(name: str, lengths: list[int], extra: int) -> None:
    d, c = 6, 3
    head = make(name, d, c)
    steps = max(lengths)
    x = torch.randn(len(lengths), d, steps)
    mask = lengths_mask(lengths, steps)
    x = x * mask.unsqueeze(1)
    ref = head(x, mask)
    # Append padding full of garbage (and put garbage in existing padding too).
    garbage = 1e3 * torch.randn(len(lengths), d, steps + extra)
    valid = lengths_mask(lengths, steps + extra).unsqueeze(1)
    x_pad = torch.where(valid, torch.nn.functional.pad(x, (0, extra)), garbage)
    out = head(x_pad, lengths_mask(lengths, steps + extra))
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out.logits[i, :, :n], ref.logits[i, :, :n], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.features[i, :, :n], ref.features[i, :, :n], atol=1e-6, rtol=0)
        # ... and a video alone (no batch mates, no padding) gives the same outputs.
        alone = head(x[i : i + 1, :, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(alone.logits[0], ref.logits[i, :, :n], atol=1e-6, rtol=0)
    assert (out.logits[~lengths_mask(lengths, steps + extra).unsqueeze(1).expand_as(out.logits)] == 0).all()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_receptive_field(name: str) -> None:
    """An impulse at t0 changes exactly the outputs within the designed receptive field
    (proves the dilation schedule 1, 2, 4, ... / kernel size / stage chaining)."""
    head = make(name, 4, 3).double()
    steps, t0 = 48, 22
    x = torch.randn(1, 4, steps, dtype=torch.float64)
    mask = torch.ones(1, steps, dtype=torch.bool)
    x2 = x.clone()
    x2[0, :, t0] += torch.randn(4, dtype=torch.float64)
    with torch.no_grad():
        changed = (head(x2, mask).logits - head(x, mask).logits).abs().amax(1)[0] > 1e-12
    r = RECEPTIVE[name]
    expected = (torch.arange(steps) - t0).abs() <= r
    assert torch.equal(changed, expected), (changed.nonzero().flatten().tolist(), r)


def reference_dal(layer: DilatedAttention, x: torch.Tensor) -> torch.Tensor:
    """Straightforward per-step, per-tap loop version of the DAL equation (module docstring)."""
    d = layer.dilation
    q, k, v = layer.query(x), layer.key(x), layer.value(x)
    b, c, steps = x.shape
    out = torch.zeros_like(q)
    for t in range(steps):
        scores, values = [], []
        for j, tau in enumerate((t - d, t, t + d)):
            inside = 0 <= tau < steps
            k_tau = k[:, :, tau] if inside else torch.zeros(b, c, dtype=x.dtype)
            v_tau = v[:, :, tau] if inside else torch.zeros(b, c, dtype=x.dtype)
            scores.append(q[:, :, t] * k_tau)
            values.append(v_tau + layer.rel_pos[:, j])
        attn = torch.softmax(torch.stack(scores, -1), -1)
        out[:, :, t] = (attn * torch.stack(values, -1)).sum(-1)
    return out


@pytest.mark.parametrize("dilation,steps", [(1, 1), (1, 6), (4, 5), (8, 20)])
def test_dilated_attention_matches_loop_reference(dilation: int, steps: int) -> None:
    torch.manual_seed(1)
    layer = DilatedAttention(5, dilation).double()
    x = torch.randn(2, 5, steps, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference_dal(layer, x), atol=1e-12, rtol=0)


def test_mstcn_stages_chain_through_sigmoid() -> None:
    head = make("mstcn", 5, 3)
    x, mask = torch.randn(2, 5, 12), lengths_mask([12, 7], 12)
    stages = head.forward_stages(x, mask)
    assert len(stages) == 2
    m = mask.unsqueeze(1).float()
    feats1, logits1 = head.stages[0](x * m, m)
    feats2, logits2 = head.stages[1](torch.sigmoid(logits1) * m, m)
    torch.testing.assert_close(stages[0], logits1)
    torch.testing.assert_close(stages[1], logits2)
    out = head(x, mask)
    torch.testing.assert_close(out.logits, logits2)
    torch.testing.assert_close(out.features, feats2)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_parameter_gets_gradient_in_train_mode(name: str) -> None:
    head = make(name, 5, 3).train()
    out = head(torch.randn(2, 5, 10), lengths_mask([10, 6], 10))
    (out.logits.square().sum() + out.features.sum()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_dropout_is_active_only_in_train_mode() -> None:
    head = make("pdan", 5, 3)
    x, mask = torch.randn(1, 5, 10), lengths_mask([10], 10)
    torch.testing.assert_close(head(x, mask).logits, head(x, mask).logits)
    head.train()
    assert not torch.allclose(head(x, mask).logits, head(x, mask).logits)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bad_input_names_head_and_field(name: str) -> None:
    head = make(name, 5, 3)
    cls = type(head).__name__
    with pytest.raises(ValueError, match=rf"{cls}: input 'x' must have shape \(B, 5, T\)"):
        head(torch.randn(2, 4, 10), lengths_mask([10, 10], 10))
    with pytest.raises(ValueError, match=rf"{cls}: 'mask' must have shape"):
        head(torch.randn(2, 5, 10), lengths_mask([9], 9))
    with pytest.raises(ValueError, match=rf"{cls}: 'mask' must be a bool tensor"):
        head(torch.randn(2, 5, 10), torch.ones(2, 10))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        TCN(4, 2, kernel_size=4)
    with pytest.raises(ValueError, match="dropout"):
        PDAN(4, 2, dropout=1.0)
    with pytest.raises(ValueError, match="num_stages"):
        MSTCN(4, 2, num_stages=0)
    with pytest.raises(ValueError, match="num_layers"):
        PDAN(4, 2, num_layers=0)
    for k in (0, 2, -3):
        with pytest.raises(ValueError, match="PDAN: input_kernel must be a positive odd number"):
            PDAN(4, 2, input_kernel=k)
    with pytest.raises(ValueError, match="Decomposed.*dropout"):
        Decomposed(4, 2, dropout=1.0)
    with pytest.raises(ValueError, match="Decomposed: input_kernel must be a positive odd number"):
        Decomposed(4, 2, input_kernel=2)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_pdan_input_kernel_is_a_linear_window_reader_on_the_residual_path(k: int) -> None:
    """With every block's output conv zeroed, the blocks add nothing and PDAN is its linear
    path ``classifier · input_conv``: logits at step t are a sum over the window t ± k//2 of
    per-offset linear maps of the input (zero outside the video), computed here by hand."""
    torch.manual_seed(k)
    d, c, hidden, steps = 4, 3, 6, 9
    head = PDAN(d, c, hidden=hidden, num_layers=2, input_kernel=k).double().eval()
    for block in head.blocks:
        torch.nn.init.zeros_(block.conv_1x1.weight)
        torch.nn.init.zeros_(block.conv_1x1.bias)
    x = torch.randn(1, d, steps, dtype=torch.float64)
    n = 7  # valid steps; the last two are padding and must read as the video's end
    mask = lengths_mask([n], steps)
    w_in, b_in = head.input_conv.weight, head.input_conv.bias  # (hidden, d, k), (hidden,)
    w_c, b_c = head.classifier.weight[:, :, 0], head.classifier.bias
    expected = torch.zeros(c, steps, dtype=torch.float64)
    half = k // 2
    for t in range(n):
        h = b_in.clone()
        for j in range(k):
            src = t + j - half
            if 0 <= src < n:
                h = h + w_in[:, :, j] @ x[0, :, src]
        expected[:, t] = w_c @ h + b_c
    with torch.no_grad():
        torch.testing.assert_close(head(x, mask).logits[0], expected)
    assert head.input_conv.weight.shape == (hidden, d, k)


def test_decomposed_sums_the_branches_logits_and_hands_over_the_motion_features() -> None:
    head = make("decomposed", 5, 3)
    x, mask = torch.randn(2, 5, 9), lengths_mask([9, 4], 9)
    out, a, m = head(x, mask), head.appearance(x, mask), head.motion(x, mask)
    torch.testing.assert_close(out.logits, a.logits + m.logits)
    torch.testing.assert_close(out.features, m.features)
    assert head.feature_dim == 16
    single = sum(p.numel() for p in PDAN(5, 3, hidden=16, num_layers=3).parameters())
    assert sum(p.numel() for p in head.parameters()) == 2 * single


def test_decomposed_distillation_reaches_the_motion_branch_only() -> None:
    # what a plugin reads (features) trains the motion branch; the appearance branch is
    # moved by the detection loss (logits) alone
    head = make("decomposed", 5, 3).train()
    out = head(torch.randn(2, 5, 10), lengths_mask([10, 6], 10))
    out.features.square().sum().backward()
    assert all(p.grad is None for p in head.appearance.parameters())
    moved = [n for n, p in head.motion.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert moved and all(not n.startswith("classifier") for n in moved)


@pytest.mark.parametrize("detach", [False, True])
def test_decomposed_detach_motion_keeps_the_detection_loss_off_the_motion_trunk(detach) -> None:
    """With ``detach_motion`` the logits are the same numbers, the detection loss (on the
    logits) moves the appearance branch and the motion classifier but no parameter of the
    motion trunk; without it, it moves the motion trunk too."""
    torch.manual_seed(0)
    head = Decomposed(5, 3, hidden=16, num_layers=3, dropout=0.0, detach_motion=detach)
    x, mask = torch.randn(2, 5, 10), lengths_mask([10, 6], 10)
    out = head(x, mask)
    plain = Decomposed(5, 3, hidden=16, num_layers=3, dropout=0.0)
    plain.load_state_dict(head.state_dict())
    torch.testing.assert_close(out.logits, plain(x, mask).logits)
    out.logits.square().sum().backward()
    moved = {n for n, p in head.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trunk = {n for n, _ in head.motion.named_parameters() if not n.startswith("classifier")}
    assert {"motion.classifier.weight", "motion.classifier.bias"} <= moved
    assert any(n.startswith("appearance.") for n in moved)
    assert (moved & {f"motion.{n}" for n in trunk}) == (set() if detach else {f"motion.{n}" for n in trunk})
    torch.jit.script(head)  # exports like the other heads
