"""wandb as every experiment's default logger, safe without network or credentials.

Mode resolution (first match wins):

1. ``mode`` given in the config (``online``/``offline``/``disabled``);
2. the ``WANDB_MODE`` environment variable (``offline`` logs locally, ``disabled`` logs
   nothing -- what the tests use);
3. credentials present (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the wandb host)
   → ``online``;
4. otherwise ``offline``, with a one-line notice: sync later with ``wandb sync <dir>``.

So there is never an interactive login prompt. Project, entity, group and tags come
from the config or from ``WANDB_PROJECT`` / ``WANDB_ENTITY`` / ``WANDB_RUN_GROUP`` /
``WANDB_TAGS`` (comma-separated). Logging happens on rank 0 only (Lightning's
``rank_zero_only`` on every logger method).

CSV or TensorBoard instead: ``--trainer.logger=kd_detect.loggers.CSVLogger`` (or
``TensorBoardLogger``); ``save_dir`` of all three defaults to the run directory.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger as _CSVLogger
from pytorch_lightning.loggers import TensorBoardLogger as _TensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

MODES = ("online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    """True when an API key is configured (env var or netrc), without contacting a server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str | None) -> tuple[str, str | None]:
    """``(mode, notice)``; ``notice`` is the one line to print when we fell back to offline."""
    if mode:
        if mode not in MODES:
            raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
        return mode, None
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("dryrun",):
        env = "offline"
    if env in MODES:
        return env, None
    if has_wandb_credentials():
        return "online", None
    return "offline", (
        "wandb: no credentials configured, logging offline (sync later with `wandb sync <run dir>/wandb/offline-run-*`)"
    )


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with kd_detect's defaults (see module docstring)."""

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        save_dir: str | None = None,
        mode: str | None = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        resolved, notice = resolve_mode(mode)
        if notice:
            rank_zero_info(notice)
        env_tags = [t for t in os.environ.get("WANDB_TAGS", "").split(",") if t]
        save_dir = save_dir or "."
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            project=project or os.environ.get("WANDB_PROJECT", "kd_detect"),
            entity=entity or os.environ.get("WANDB_ENTITY"),
            name=name,
            group=group or os.environ.get("WANDB_RUN_GROUP"),
            tags=list(tags or env_tags) or None,
            save_dir=save_dir,
            mode=resolved,
            log_model=log_model,
            **kwargs,
        )
        self.mode = resolved
        if not kwargs.get("anonymous"):
            # Lightning always hands wandb.init anonymous=None, which wandb >= 0.19 warns about
            # ("The anonymous setting has no effect") on every run, even when disabled
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def log_resolved_config(self, config: dict[str, Any]) -> None:
        """Attach the resolved experiment config to the run (once, rank 0)."""
        if self.mode == "disabled":
            return
        self.experiment.config.update({"kd_detect_config": config}, allow_val_change=True)


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger whose ``save_dir`` defaults to the run directory."""

    def __init__(self, save_dir: str | None = None, name: str = "logs", **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir or ".", name=name, **kwargs)


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoardLogger whose ``save_dir`` defaults to the run directory
    (needs the ``tensorboard`` package, not a kd_detect dependency)."""

    def __init__(self, save_dir: str | None = None, name: str = "logs", **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir or ".", name=name, **kwargs)
