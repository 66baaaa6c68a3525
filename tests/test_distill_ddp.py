"""Contrastive negatives gathered across DDP ranks (``gather_distributed``, DESIGN.md §3).

Two CPU processes (gloo) with *different* atom counts each compute the atomic loss with
gathered teacher atoms and DDP-style averaged gradients; the result must equal one process
computing, for every rank's atoms, InfoNCE against all atoms of both ranks.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from kd_detect.distill import AtomicContrastive
from kd_detect.distill._contrastive import info_nce

WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from kd_detect.distill import AtomicContrastive
    from kd_detect.models.heads.base import HeadOutput
    rank, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = torch.load(path)
    out = {}
    for sym in (False, True, "excl"):
        p = AtomicContrastive(window=2, embed_dim=4, symmetric=bool(sym), gather_distributed=True, tau=0.5,
                              exclude_same_label=sym == "excl")
        p.setup(3, 5, 1)
        p.load_state_dict(data["state"])
        s, t, mask = data["inputs"][rank]
        s = s.clone().requires_grad_()
        loss = p(HeadOutput(s, s), HeadOutput(t, t), mask, data["labels"][rank])
        loss.backward()
        grads = {}
        for n, prm in p.named_parameters():  # what DDP does: average over ranks
            g = prm.grad.clone()
            dist.all_reduce(g)
            grads[n] = g / 2
        out[sym] = {"loss": loss.detach(), "grads": grads, "s_grad": s.grad}
    torch.save(out, f"{path}.{rank}")
    dist.destroy_process_group()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ddp
def test_gathered_negatives_match_single_process(tmp_path):
    torch.manual_seed(0)
    ref = AtomicContrastive(window=2, embed_dim=4, tau=0.5)
    ref.setup(3, 5, 1)
    masks = [torch.ones(2, 7, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)]
    masks[0][1, 3:] = False  # rank 0: 4 + 2 atoms, rank 1: 2 atoms
    inputs = [(torch.randn(m.shape[0], 3, m.shape[1]) * m[:, None], torch.randn(m.shape[0], 5, m.shape[1]) * m[:, None], m) for m in masks]
    # one class: atoms are "on" or "off"; with exclude_same_label the negatives are the other kind
    labels = [torch.zeros(2, 1, 7), torch.zeros(1, 1, 4)]
    labels[0][0, 0, :2] = 1  # rank 0 atom 0 on
    labels[1][0, 0, 2] = 1  # rank 1 atom 1 on
    path = tmp_path / "data.pt"
    torch.save({"state": ref.state_dict(), "inputs": inputs, "labels": labels}, path)
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(r), port, str(path)], stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    for pr in procs:
        _, err = pr.communicate(timeout=180)
        assert pr.returncode == 0, err[-2000:]
    results = [torch.load(f"{path}.{r}") for r in range(2)]

    for sym in (False, True, "excl"):
        ref.symmetric = bool(sym)
        ref.zero_grad()
        ss = [s.clone().requires_grad_() for s, _, _ in inputs]
        atoms = [ref.atom_batch(s, t, m, y) for s, (_, t, m), y in zip(ss, inputs, labels)]
        q, k = ref.embed(torch.cat([a[0] for a in atoms]), torch.cat([a[1] for a in atoms]))
        on = torch.cat([a.labels[:, 0] for a in atoms])
        n0 = atoms[0][0].shape[0]
        assert n0 == 6 and q.shape[0] == 8 and on.tolist() == [True] + [False] * 5 + [False, True]
        per_rank = []
        for lo, hi in ((0, n0), (n0, q.shape[0])):
            tgt = torch.arange(lo, hi)
            drop = torch.zeros(hi - lo, q.shape[0], dtype=torch.bool)
            if sym == "excl":  # same label set and not the positive: not a negative
                drop = (on[lo:hi, None] == on[None, :]) & (tgt[:, None] != torch.arange(q.shape[0])[None, :])
            l_qk = torch.nn.functional.cross_entropy((q[lo:hi] @ k.T / ref.tau).masked_fill(drop, -1e9), tgt)
            l_kq = torch.nn.functional.cross_entropy((k[lo:hi] @ q.T / ref.tau).masked_fill(drop, -1e9), tgt)
            per_rank.append(0.5 * (l_qk + l_kq) if sym else l_qk)
        (0.5 * (per_rank[0] + per_rank[1])).backward()
        for r in range(2):
            got = results[r][sym]
            torch.testing.assert_close(got["loss"], per_rank[r].detach())
            # the student's own gradient: d(sum of rank losses)/d s_r, through the gathered copies too
            torch.testing.assert_close(got["s_grad"], 2 * ss[r].grad)
            for n, prm in ref.named_parameters():
                torch.testing.assert_close(got["grads"][n], prm.grad, msg=f"{n} sym={sym}")
        # without gathering each rank would only see its own negatives: a different loss
        local = info_nce(q[:n0].detach(), k[:n0].detach(), ref.tau, bool(sym))
        assert not torch.allclose(local, per_rank[0].detach())
