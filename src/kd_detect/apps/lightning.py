"""The LightningCLI behind ``kd-detect fit | validate | test | predict`` (DESIGN.md §7).

Imported by :mod:`kd_detect.cli` only for those subcommands (it imports Lightning, the
DataModule and every module class). Adds the data→model links, ``--test_after_fit``, the
run-directory conventions (config.yaml, sweep run directories, logger save_dir), a rich
progress bar on a terminal and the :class:`~kd_detect.callbacks.TeacherMetrics` callback.
A run stopped by SIGTERM ends with :class:`~kd_detect.errors.TrainingInterrupted` (one line:
where ``last.ckpt`` is and how to resume; exit status 1) instead of Lightning's silent exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from kd_detect.apps.unknown_keys import unknown_key_line
from kd_detect.callbacks.teachers import TeacherMetrics
from kd_detect.config import expand_config_includes
from kd_detect.data.datamodule import FeatureDataModule
from kd_detect.errors import ConfigError, KdDetectError, TrainingInterrupted
from kd_detect.io import atomic_write, ensure_writable_dir, file_identity
from kd_detect.modules.detector import DetectorModule
from kd_detect.runs import RECORD


class KDArgumentParser(LightningArgumentParser):
    """The CLI's parser: a mistyped key is refused with the key and the nearest valid one on
    the first line (:mod:`kd_detect.apps.unknown_keys`), jsonargparse's full report only
    with ``--verbose``; every other parse error is jsonargparse's own (exit status 2)."""

    #: set by :func:`lightning_main`: the command line and whether ``--verbose`` was given
    argv: list[str] = []
    verbose: bool = False

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if self.exit_on_error:
            parser = getattr(ex, "subcommand_parser", None) or self
            options = [o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")]
            line = unknown_key_line(message, KDArgumentParser.argv, options)
            if line is not None:
                prog = parser.prog.replace(" [options]", "")
                sys.stderr.write(f"{prog}: error: {line}\n")
                if KDArgumentParser.verbose:
                    sys.stderr.write("\n")
                    return super().error(message, ex)
                sys.stderr.write(f"({prog} --help lists every key; --verbose shows the parser's full report)\n")
                raise SystemExit(2)
        return super().error(message, ex)


def refused_by_constructor(ex: BaseException | None) -> str | None:
    """``Class: message`` when the parse failed because a kd_detect class refused its
    arguments (a ``ValueError`` raised in one of our own ``__init__``, e.g. two options that
    do not combine), found along the exception's cause chain; ``None`` otherwise (a
    jsonargparse type error, or a bug elsewhere, keeps the parser's own report)."""
    import kd_detect

    package = os.path.dirname(os.path.abspath(kd_detect.__file__))
    seen: set[int] = set()
    found = None
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        if isinstance(ex, ValueError) and ex.__traceback__ is not None:
            frames = []
            tb = ex.__traceback__
            while tb is not None:
                frames.append(tb.tb_frame)
                tb = tb.tb_next
            ours = [f for f in frames if os.path.abspath(f.f_code.co_filename).startswith(package + os.sep)]
            if ours and frames[-1] is ours[-1]:
                inits = [f for f in ours if f.f_code.co_name == "__init__" and "self" in f.f_locals]
                if inits:
                    found = f"{type(inits[0].f_locals['self']).__name__}: {ex}"
        ex = ex.__cause__ or ex.__context__
    return found


def write_run_record(run_dir: str | os.PathLike, data_path: str | os.PathLike | None) -> str:
    """Write ``<run_dir>/run.json``: the data file's path and identity (size, mtime, content
    hash; :func:`kd_detect.io.file_identity`), what ``make train`` compares before reusing
    the run (:mod:`kd_detect.lab.runner`). Returns its path."""
    record: dict[str, Any] = {"data": None}
    if data_path is not None and os.path.isfile(data_path):
        record["data"] = {"path": str(data_path), **file_identity(data_path)}
    path = os.path.join(run_dir, RECORD)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``<run dir>/config.yaml`` and the data file's identity
    to ``<run dir>/run.json`` (:func:`write_run_record`; overwriting: a
    rerun of the same experiment replaces them) and attaches the config to the wandb run
    when wandb logs."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            path = os.path.join(trainer.default_root_dir, self.config_filename)
            os.makedirs(trainer.default_root_dir, exist_ok=True)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
            if stage == "fit":  # what `make train` compares (kd_detect.lab.runner)
                data = self.config.get("data")
                data_path = (data.get("path") or data.get("init_args", {}).get("path")) if data else None
                write_run_record(trainer.default_root_dir, data_path)
            for logger in trainer.loggers:
                if hasattr(logger, "log_resolved_config"):
                    logger.log_resolved_config(self.config.as_dict())
        self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def last_checkpoint(trainer: Any) -> str | None:
    """The ``last.ckpt`` a checkpoint callback of ``trainer`` wrote, or ``None``."""
    for cb in getattr(trainer, "checkpoint_callbacks", []) or []:
        candidates = [getattr(cb, "last_model_path", "") or ""]
        if getattr(cb, "dirpath", None):
            candidates.append(os.path.join(cb.dirpath, "last.ckpt"))
        for path in candidates:
            if path and os.path.isfile(path):
                return path
    return None


def sigterm_error(trainer: Any, subcommand: str = "fit") -> TrainingInterrupted | None:
    """After ``trainer.<subcommand>`` returned (or Lightning's ``SIGTERMException``, a
    ``SystemExit`` with status 0, was caught): the one-line error to raise when the run was
    stopped by SIGTERM (``trainer.received_sigterm``), else ``None``. It says where
    ``last.ckpt`` is and how to resume."""
    if not getattr(trainer, "received_sigterm", False):
        return None
    where = f"after {trainer.current_epoch} completed epoch(s), step {trainer.global_step}"
    last = last_checkpoint(trainer)
    if subcommand != "fit":
        return TrainingInterrupted(f"{subcommand} stopped by SIGTERM {where}; nothing was written, run it again")
    if last is None:
        return TrainingInterrupted(
            f"fit stopped by SIGTERM {where} before any checkpoint was written "
            f"(run directory {trainer.default_root_dir}); run it again from the start"
        )
    return TrainingInterrupted(
        f"fit stopped by SIGTERM {where}; the last checkpoint is {last}. Resume with the same command plus "
        f"--ckpt_path={last} (`make train EXP=<name> RESUME=1` does this for runs/<name>/last.ckpt)"
    )


class KDCLI(LightningCLI):
    """LightningCLI with the data→model links and kd_detect's run conventions."""


    def instantiate_classes(self) -> None:
        """A kd_detect class that refuses its arguments (two options that do not combine, a
        value out of range) ends in one line naming the class and why, exit status 1; the
        full trace of jsonargparse's attempts only with ``--verbose``."""
        try:
            super().instantiate_classes()
        except KdDetectError:  # our own one-line errors: the command's handler prints them
            raise
        except ValueError as err:
            refused = refused_by_constructor(err)
            if refused is None or KDArgumentParser.verbose:
                raise
            raise SystemExit(f"kd-detect: error: {refused} (--verbose shows the full trace)") from None

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.init_args.classes", apply_on="instantiate")
        parser.link_arguments("data.modality_dims", "model.init_args.modality_dims", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit only: test the best checkpoint afterwards and write metrics.json",
        )

    def _set_seed(self) -> None:
        # the run directory is checked before seeding, so its one-line error comes alone
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        ensure_writable_dir(cfg.trainer.get("default_root_dir") or ".", "run directory, --trainer.default_root_dir")
        super()._set_seed()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.get("default_root_dir") or "."
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            # runs of a sweep share the command line: give each its own run directory
            root = os.path.join(root, os.environ["WANDB_RUN_ID"])
            cfg.trainer.default_root_dir = root
        # before any logger, callback or data is built: one line instead of a logger's traceback
        ensure_writable_dir(root, "run directory, --trainer.default_root_dir")
        loggers = cfg.trainer.get("logger")
        items = loggers if isinstance(loggers, list) else [loggers]
        for item in items:
            init = getattr(item, "init_args", None)
            if init is not None and "save_dir" in init and init.save_dir in (None, "", "."):
                init.save_dir = root

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        if config.get("enable_progress_bar") is not False and sys.stdout.isatty():
            from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

            if not any(isinstance(c, ProgressBar) for c in list(callbacks) + list(config.get("callbacks") or [])):
                callbacks.append(RichProgressBar())
        if not any(isinstance(c, TeacherMetrics) for c in list(callbacks) + list(config.get("callbacks") or [])):
            callbacks.append(TeacherMetrics())
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:  # a SystemExit(0): would report success
            pass
        error = sigterm_error(self.trainer, subcommand)
        if error is not None:
            raise error

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
            # verbose=False: RunReport prints the figures once (Lightning's table repeated them)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "test":  # RunReport prints the test figures: not Lightning's table too
            parser.set_defaults(verbose=False)
        return parser


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_third_party_noise() -> None:
    """Silence, precisely, what every fit printed without telling the user anything about it:

    * Lightning's advertisement for litlogger (an info record of its rank-zero logger);
    * torch's deprecation of ``LeafSpec``, which Lightning's own ``_pytree`` still calls;
    * "number of training batches is smaller than the logging interval" (a small file: the
      epoch-level metrics are logged anyway);
    * wandb's "anonymous setting has no effect" is fixed at its cause in
      :class:`kd_detect.loggers.WandbLogger`.
    """
    import warnings

    tip = _DropMessages("💡 Tip: For seamless cloud logging")
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropMessages) for f in rank_zero.filters):
        rank_zero.addFilter(tip)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                                              r"interval")


def lightning_main(args: list[str] | None = None, run: bool = True, cli_class: type[KDCLI] = KDCLI) -> KDCLI:
    import warnings

    # kd-detect always hands LightningCLI its (include-expanded) argv explicitly, and the
    # run directory holds config.yaml before the first checkpoint by design.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # The module turns host batches into the heads' layout in on_after_batch_transfer by
    # design (docs/format.md, "The batch a model sees"); Lightning warns whenever a
    # DataModule is also present, although the DataModule defines no such hook.
    warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")
    quiet_third_party_noise()
    if args is None:
        args = sys.argv[1:]
    # our --verbose is a bare flag; `kd-detect test --verbose true` is trainer.test's own
    ours = [i for i, a in enumerate(args) if a == "--verbose" and (i + 1 == len(args) or args[i + 1].startswith("-"))]
    KDArgumentParser.verbose = bool(ours)
    args = [a for i, a in enumerate(args) if i not in ours]
    KDArgumentParser.argv = list(args)
    try:
        args = expand_config_includes(args)
    except ConfigError as err:
        raise SystemExit(f"kd-detect: error: {err}") from None
    return cli_class(
        DetectorModule,
        FeatureDataModule,
        subclass_mode_model=True,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        parser_class=KDArgumentParser,
        parser_kwargs={"prog": "kd-detect"},  # also when run as python -m kd_detect.cli or in-process
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )
