"""The plain subcommands of ``kd-detect`` (everything but the LightningCLI ones).

One module per subcommand; each has ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> exit status``, and imports what it needs inside ``run`` so that building the
table (``kd-detect --help``) imports nothing heavy. :func:`main` runs one of them:
argparse errors exit 2, a :class:`~kd_detect.errors.KdDetectError` is one line
``kd-detect <cmd>: error: msg`` and exit 1, anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from kd_detect.errors import user_errors

#: subcommand -> (module, one-line summary for ``kd-detect --help``)
APPS: dict[str, tuple[str, str]] = {
    "check": ("kd_detect.apps.check", "validate a feature file, print a summary"),
    "cache-teacher": ("kd_detect.apps.cache_teacher", "run a frozen teacher once, store its outputs"),
    "predict": ("kd_detect.apps.predict", "per-step probabilities (and segments) of a checkpoint or export"),
    "export": ("kd_detect.apps.export", "TorchScript + state file of a student's RGB-only detector"),
    "plot": ("kd_detect.apps.plot", "a run's pictures into RUN_DIR/plots"),
    "diagnose": ("kd_detect.apps.diagnose", "atomic-contrast retrieval rates, or gradient alignment, of a trained student"),
}


def load(name: str) -> ModuleType:
    return importlib.import_module(APPS[name][0])


def parser_for(name: str) -> argparse.ArgumentParser:
    app = load(name)
    parser = argparse.ArgumentParser(prog=f"kd-detect {name}", description=app.DESCRIPTION)
    app.add_arguments(parser)
    return parser


def main(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for subcommand ``name`` and run it; returns the exit status."""
    parser = parser_for(name)
    args = parser.parse_args(argv)
    with user_errors(parser.prog):
        return int(load(name).run(args) or 0)
