"""kd-detect: the command line of kd_detect (DESIGN.md §7).

fit | validate | test | predict are a LightningCLI: --config files compose
(--config experiments/base.yaml --config experiments/x.yaml), every key can be
overridden (--model.init_args.head.init_args.num_layers=4), and the data's class
names, class count and modality dims are linked from the DataModule into the model.
fit --test_after_fit=true tests the best checkpoint in the same process (what
make train uses). The other subcommands are plain tools:

    kd-detect check FILE.h5                  validate a feature file, print a summary
    kd-detect cache-teacher --ckpt T.ckpt --data FILE.h5 --out cache.h5
    kd-detect predict --ckpt CKPT --data FILE.h5 --out preds.h5 [--segments segs.jsonl]
    kd-detect export --ckpt student.ckpt --out student.pt
    kd-detect plot RUN_DIR
    kd-detect diagnose RUN_DIR [--gradients] atomic retrieval, or each loss's gradient vs validation
"""

from __future__ import annotations

import sys

from kd_detect.apps import APPS
from kd_detect.apps import main as run_app

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    """Dispatch: ``--help``, a plain app (:data:`kd_detect.apps.APPS`; imported on use), or
    the LightningCLI (:mod:`kd_detect.lightning_cli`, imported only for its subcommands)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command in ("", "-h", "--help"):
        print(__doc__.strip())
        print("\nkd-detect fit --help lists every configurable key.")
        return 0 if command else 2
    if command == "predict" and any(a == "--ckpt" or a.startswith("--ckpt=") for a in argv[1:]):
        # `kd-detect predict --ckpt ...` is the plain tool; LightningCLI's predict uses --ckpt_path
        return run_app("predict", argv[1:])
    if command in APPS and command != "predict":
        return run_app(command, argv[1:])
    from kd_detect.apps.lightning import lightning_main
    from kd_detect.errors import user_errors

    # Our own input errors (missing data file, stale cache, incompatible teacher, ...) are
    # one line, not a traceback through jsonargparse; anything else propagates.
    with user_errors("kd-detect"):
        lightning_main(argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
