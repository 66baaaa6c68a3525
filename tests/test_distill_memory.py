"""Global-relation memory stays linear in T (DESIGN.md §3): at T=16384 a single T×T fp32
relation needs 1 GiB; forward+backward of both modes must stay far below (< 128 MiB).

Measured in a fresh subprocess as the growth of peak RSS over a warmed-up baseline (peak
reset through ``/proc/self/clear_refs`` between measurements; where that is not possible,
one process per measurement and ``ru_maxrss``). ``MALLOC_MMAP_THRESHOLD_`` makes glibc serve every large buffer by ``mmap`` and
return it on free, so RSS tracks live memory instead of allocator caching. A control
allocation of 160 MiB checks that the probe does see big tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    torch.set_num_threads(1)
    from kd_detect.distill import GlobalContextualRelation
    from kd_detect.models.heads.base import HeadOutput

    def reset_peak():
        try:  # Linux: reset VmHWM so each measurement starts from the current RSS
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if not RESET else next(
            int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")
        )

    RESET = reset_peak()
    T, F = 16384, 64
    out = {"reset": RESET}
    torch.manual_seed(0)
    s = torch.randn(1, F, T, requires_grad=True)
    f = torch.randn(1, F, T)
    mask = torch.ones(1, T, dtype=torch.bool)
    for what in sys.argv[1:]:
        if what == "control":
            reset_peak()
            base = peak_mib()
            control = torch.ones(T, 2560)  # 160 MiB
            out[what] = peak_mib() - base
            del control
            continue
        p = GlobalContextualRelation(mode=what)
        p.setup(F, F, 1)
        w = torch.randn(1, F, 300, requires_grad=True)  # warm-up: kernels, autograd engine
        p(HeadOutput(w, w), HeadOutput(w.detach(), w.detach()), torch.ones(1, 300, dtype=torch.bool)).backward()
        reset_peak()
        base = peak_mib()
        loss = p(HeadOutput(s, s), HeadOutput(f, f), mask)
        loss.backward()
        out[what] = peak_mib() - base
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        s.grad = None
    print(json.dumps(out))
    """
)


def run(*what: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT, *what], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_global_relation_memory_is_linear_in_T():
    mib = run("control", "gram", "kl")
    if not mib["reset"]:  # no peak reset here: one fresh process per measurement
        mib = {**run("control"), **run("gram"), **run("kl")}
    assert mib["control"] >= 150, mib  # the probe sees a 160 MiB tensor
    assert mib["gram"] < 128, mib
    assert mib["kl"] < 128, mib  # a T×T fp32 relation alone would be 1024 MiB
