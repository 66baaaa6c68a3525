"""Training-step costs: distillation overhead, inference speed, FLOP efficiency, bf16.

* Distillation overhead: one training step (``module.training_step`` + backward +
  ``optimizer.step``, no Lightning loop) of the RGB-only PDAN vs the KD student with a
  live frozen teacher vs the KD student reading the teacher cache (atomic + global +
  boundary), and the cached student with each plugin alone; all interleaved.
* Inference: the RGB student in eval mode under ``no_grad`` at batch 1 and batched.
* Compute efficiency: FLOPs of the plain training step (``FlopCounterMode``) per second,
  over the FLOP/s of a dense fp32 matmul timed in the same interleaved run.
* bf16: every plugin's forward+backward under ``torch.autocast("cpu", bfloat16)``.

With ``device="cuda"`` modules and batches live on the GPU, steps run under the given
autocast dtype (bf16-mixed where supported) and every timing waits for the device.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import GeneratedData, interleaved, median, spread

THREE_LOSSES = {
    "atomic": {"class_path": "kd_detect.distill.AtomicContrastive", "init_args": {"weight": 1.0}},
    "global": {"class_path": "kd_detect.distill.GlobalContextualRelation", "init_args": {"weight": 1.0}},
    "boundary": {"class_path": "kd_detect.distill.BoundarySaliency", "init_args": {"weight": 1.0}},
}


def save_checkpoint(module: Any, path: Path) -> Path:
    """A checkpoint ``load_detector`` accepts (state dict + the recorded config), without a Trainer."""
    import pytorch_lightning as pl

    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def batches_of(data: GeneratedData, batch_size: int, n: int, dtype: str = "float16",
               device: str = "cpu") -> tuple[Any, list[dict]]:
    """The DataModule (all modalities) and its first ``n`` training batches (whole videos),
    on ``device`` in model layout (what the training step sees after the transfer)."""
    from kd_detect.data.batch import to_model_layout
    from kd_detect.data.datamodule import FeatureDataModule

    dm = FeatureDataModule(str(data.h5[dtype]), batch_size=batch_size, val_subset="training",
                           test_subset="training")
    return dm, [to_model_layout(b, device) for b in itertools.islice(iter(dm.train_dataloader()), n)]


def device_sync(device: str) -> Callable[[], None] | None:
    """What a timer must wait for on ``device`` (``None`` on the CPU)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def autocast(device: str, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` in ``dtype`` on ``device``'s type, a no-op for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _train_step(module: Any, batches: list[dict], device: str = "cpu",
                amp: torch.dtype | None = None) -> Callable[[], None]:
    """One optimiser step per call, the forward (and a live teacher's) under ``amp``
    autocast as Lightning's mixed-precision plugin runs it."""
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    cycle = itertools.cycle(batches)

    def step() -> None:
        with autocast(device, amp):
            loss = module.training_step(next(cycle), 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def build_modules(dm: Any, root: Path, teacher_fusion: str = "late", device: str = "cpu") -> dict[str, Any]:
    """Plain RGB PDAN, the flow teacher (checkpoint + cache), KD students (live, cached,
    cached with each plugin alone). Same seed, so every student head starts alike."""
    from kd_detect.data.teacher_cache import write_teacher_cache
    from kd_detect.modules import DetectorModule, StudentModule, TeacherModule, instantiate
    from kd_detect.modules.loading import file_sha256

    mods = list(dm.modality_dims)
    common = dict(num_classes=dm.num_classes, classes=dm.classes, modality_dims=dm.modality_dims)
    torch.manual_seed(0)
    teacher = instantiate(TeacherModule, modalities=mods, fusion=teacher_fusion, **common)
    ckpt = save_checkpoint(teacher, root / "teacher.ckpt")
    dm.setup("predict")
    cache = write_teacher_cache(teacher, dm.predict_dataloader(), root / "teacher_cache.h5", file_sha256(ckpt),
                                device=device)
    out: dict[str, Any] = {"teacher": teacher}

    def student(**kw: Any) -> Any:
        torch.manual_seed(0)
        return instantiate(StudentModule, modalities=["rgb"], **common, **kw)

    torch.manual_seed(0)
    out["plain"] = instantiate(DetectorModule, modalities=["rgb"], **common)
    out["kd_live"] = student(teachers={"flow": str(ckpt)}, distill=THREE_LOSSES)
    out["kd_cached"] = student(teacher_caches={"flow": str(cache)}, distill=THREE_LOSSES)
    for name, cfg in THREE_LOSSES.items():
        out[f"kd_cached_{name}"] = student(teacher_caches={"flow": str(cache)}, distill={name: cfg})
    return {k: m.to(device) for k, m in out.items()}


def dense_matmul(n: int, device: str = "cpu") -> tuple[Callable[[], None], float]:
    """An ``n×n @ n×n`` fp32 matmul and its FLOPs (the practical ceiling of this machine)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n**3


def count_flops(fn: Callable[[], None]) -> float:
    """FLOPs of one call of ``fn`` (matmuls/convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def bench_distill(dm: Any, batches: list[dict], root: Path, repeats: int, matmul_n: int = 2048,
                  teacher_fusion: str = "late", device: str = "cpu", amp: torch.dtype | None = None) -> dict[str, Any]:
    """Interleaved training steps of every variant + the dense matmul; ratios over plain."""
    modules = build_modules(dm, root, teacher_fusion, device)
    fns = {k: _train_step(modules[k], batches, device, amp) for k in modules if k != "teacher"}
    mm, mm_flops = dense_matmul(matmul_n, device)
    fns["dense_matmul"] = mm
    step_flops = count_flops(_train_step(modules["plain"], batches[:1], device, amp))
    sync = device_sync(device)
    times = interleaved(fns, repeats, warmup=1, sync=sync)
    sec = {k: median(v) for k, v in times.items()}
    plain = sec["plain"]
    bsz = int(batches[0]["mask"].shape[0])
    steps = [int(b["mask"].shape[1]) for b in batches]
    out = {
        "batch_size": bsz, "batches": len(batches), "padded_steps": steps, "repeats": repeats,
        "teacher": f"TeacherModule rgb+flow, fusion={teacher_fusion}, PDAN default (hidden 512)",
        "student": "PDAN default (hidden 512), rgb only", "device": device, "amp": str(amp),
        "seconds": sec, "noise": {k: spread(v) for k, v in times.items()},
        "over_plain": {k: sec[k] / plain for k in sec if k not in ("dense_matmul",)},
        "plain_step_gflop": step_flops / 1e9,
        "pdan_gflops_per_s": step_flops / plain / 1e9,
        "matmul_n": matmul_n, "matmul_gflops_per_s": mm_flops / sec["dense_matmul"] / 1e9,
    }
    out["pdan_flops_over_matmul"] = out["pdan_gflops_per_s"] / out["matmul_gflops_per_s"]
    # the teacher's own forward (what a live teacher adds), as StudentModule runs it
    teacher = modules["teacher"].eval()
    cycle = itertools.cycle(batches)

    def teacher_forward() -> None:
        with torch.inference_mode(), autocast(device, amp):
            teacher(next(cycle))

    t_times = interleaved({"teacher_forward": teacher_forward, "plain": fns["plain"]}, max(2, repeats // 2),
                          sync=sync)
    out["teacher_forward_over_plain_step"] = median(t_times["teacher_forward"]) / median(t_times["plain"])
    # FLOP floor of the live path: at equal FLOP/s a live teacher costs at least this much
    out["teacher_forward_gflop"] = count_flops(teacher_forward) / 1e9
    out["live_flop_floor_over_plain"] = 1.0 + out["teacher_forward_gflop"] / out["plain_step_gflop"]
    out["kd_live_over_floor"] = out["over_plain"]["kd_live"] / out["live_flop_floor_over_plain"]
    # where the live step's time goes, measured: plugins (the cached step) + teacher forward
    out["kd_live_parts_over_plain"] = out["over_plain"]["kd_cached"] + out["teacher_forward_over_plain_step"]
    # what the live step costs beyond its parts (teacher output copies, autocast/inference contexts...)
    out["kd_live_over_parts"] = out["over_plain"]["kd_live"] / out["kd_live_parts_over_plain"]
    out["teacher_gflops_per_s_over_plain"] = (
        out["teacher_forward_gflop"] / median(t_times["teacher_forward"])
        / (out["plain_step_gflop"] / median(t_times["plain"])))
    return out


def bench_inference(dm: Any, batches: list[dict], repeats: int, device: str = "cpu") -> dict[str, Any]:
    """Eval-mode ``no_grad`` forwards of the RGB PDAN at batch 1 and at the batches' size."""
    from kd_detect.modules import DetectorModule, instantiate

    torch.manual_seed(0)
    model = instantiate(DetectorModule, modalities=["rgb"], num_classes=dm.num_classes, classes=dm.classes,
                        modality_dims=dm.modality_dims).eval().to(device)
    big = batches[0]
    single = {"rgb": big["rgb"][:1, :, : int(big["mask"][0].sum())].contiguous(),
              "mask": big["mask"][:1, : int(big["mask"][0].sum())]}

    def fwd(batch: dict) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(batch)
        return run

    inner = max(1, 8)  # batch-1 forwards are short: time 8 per sample
    def single_many() -> None:
        for _ in range(inner):
            fwd(single)()

    times = interleaved({"b1_x8": single_many, "batched": fwd(big)}, repeats, warmup=1, sync=device_sync(device))
    t1 = median(times["b1_x8"]) / inner
    tb = median(times["batched"])
    bsz, steps_b = big["mask"].shape
    return {
        "b1_steps_per_s": 1.0 / t1, "b1_timesteps": int(single["mask"].shape[1]),
        "b1_feature_steps_per_s": single["mask"].shape[1] / t1,
        "batched_size": int(bsz), "batched_steps_per_s": 1.0 / tb, "batched_videos_per_s": bsz / tb,
        "batched_feature_steps_per_s": float(big["mask"].sum()) / tb,
    }


def bench_bf16(batch: int = 4, steps: int = 48, dim_s: int = 64, dim_t: int = 96, classes: int = 10) -> dict[str, Any]:
    """Each plugin, forward+backward under bf16 autocast on random data (student
    features from a Conv1d inside autocast, so they are bf16; padded steps in the mask):
    ``{name: {"finite": bool, "loss": float}}``."""
    import kd_detect.distill as distill
    from kd_detect.models.heads.base import HeadOutput

    out = {}
    plugins = {
        "atomic": distill.AtomicContrastive, "at": distill.AttentionTransfer, "boundary": distill.BoundarySaliency,
        "crd": distill.CRD, "fitnets": distill.FitNets, "global": distill.GlobalContextualRelation,
        "logit_kd": distill.LogitKD, "mars": distill.FeatureMSE, "pkt": distill.PKT, "rkd": distill.RKD,
        "sp": distill.SimilarityPreserving,
    }
    for name, cls in sorted(plugins.items()):
        torch.manual_seed(0)
        plugin = cls()
        plugin.setup(dim_s, dim_t, classes)
        enc = torch.nn.Conv1d(32, dim_s + classes, 1)
        x = torch.randn(batch, 32, steps)
        mask = torch.ones(batch, steps, dtype=torch.bool)
        mask[1, steps // 2 :] = False
        teacher = HeadOutput(torch.randn(batch, dim_t, steps).bfloat16(), torch.randn(batch, classes, steps).bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = enc(x)
            student = HeadOutput(h[:, :dim_s], h[:, dim_s:])
            loss = plugin(student, teacher, mask)
        loss.backward()
        grads = [p.grad for p in itertools.chain(enc.parameters(), plugin.parameters()) if p.grad is not None]
        finite = bool(torch.isfinite(loss).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
        out[name] = {"finite": finite, "loss": float(loss.detach().float()), "student_dtype": str(h.dtype)}
    return out
