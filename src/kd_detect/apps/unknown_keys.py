"""One first line for a mistyped configuration key of ``kd-detect fit | validate | test | predict``.

jsonargparse refuses an unknown key after ~70 lines of usage and a nested report of every
Union member it tried; the key itself comes last. :func:`unknown_key_line` reads that
report and returns one line naming the key as the user wrote it and the nearest valid
key (``difflib``, ratio >= 0.6), or ``None`` when the error is of another kind (then the
parser's own text is shown). Two shapes are recognised:

* ``unrecognized arguments: --data.pth=3`` (command line) or ``Subcommand 'fit' does not
  accept option 'trainer.max_epohs'`` (a ``--config`` file): a top-level key; the
  candidates are the parser's own options;
* ``... class_path 'pkg.Class' ... Option 'weigth' is not accepted`` (or the class named
  after the option on its line, ``Got value: Namespace(class_path='pkg.Class', ...``): a key of a class
  chosen by ``class_path`` (the model, a head, a distillation plugin) at any depth; the
  candidates are that class's init parameters (as jsonargparse resolves them, ``**kwargs``
  followed to the base classes), and the user's key is found on the command line by its
  last component (else it was in a ``--config`` file, which the line says).
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Iterable, Sequence

NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
CLASS_PATH = re.compile(r"class_path[ =]'([^']+)'")
UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)", re.IGNORECASE)
NOT_ACCEPTED_TOP = re.compile(r"does not accept (?:option|nested key) '([^']+)'")
CUTOFF = 0.6


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (``difflib``), or ``None`` below :data:`CUTOFF`."""
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def class_parameters(class_path: str) -> list[str]:
    """The init parameter names of ``class_path`` as jsonargparse accepts them (empty when
    the class cannot be imported)."""
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False, sub_configs=True)
    except Exception:  # noqa: BLE001 - only a suggestion is lost
        return []
    return sorted({a.dest.split(".")[0] for a in parser._actions if a.dest not in ("help", "config")})


def _argv_keys(argv: Sequence[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2]


def unknown_key_line(message: str, argv: Sequence[str], options: Iterable[str] = ()) -> str | None:
    """One line for an unknown-key error ``message`` of the parser (see module doc), or
    ``None``. ``argv`` is the command line given, ``options`` the parser's own keys
    (without ``--``)."""
    match = UNRECOGNIZED.search(message)
    if match:
        key = match.group(1).lstrip("-").split("=", 1)[0]
        guess = nearest(key, options)
        hint = f"; did you mean --{guess}?" if guess else ""
        return f"unknown key --{key}{hint}"
    match = NOT_ACCEPTED_TOP.search(message)
    if match:
        key = match.group(1)
        guess = nearest(key, options)
        where = "" if key in _argv_keys(argv) else " in a --config file"
        hint = f"; did you mean {guess}?" if guess else ""
        return f"unknown key {key}{where}{hint}"
    match = NOT_ACCEPTED.search(message)
    if not match:
        return None
    name = match.group(1)
    # the class is named after the option on its line ("... Got value: Namespace(class_path='x'")
    # or, more often, on an earlier line ("Problem with given class_path 'x':")
    line_end = message.find("\n", match.end())
    after = CLASS_PATH.findall(message[match.end() : None if line_end < 0 else line_end])
    before = CLASS_PATH.findall(message[: match.start()])
    owner = after[0] if after else before[-1] if before else None
    guess = nearest(name, class_parameters(owner)) if owner else None
    given = [k for k in _argv_keys(argv) if k == name or k.endswith("." + name)]
    of = f" (not a parameter of {owner})" if owner else ""
    if given:
        key = given[-1]
        hint = f"; did you mean --{key[: len(key) - len(name)]}{guess}?" if guess else ""
        return f"unknown key --{key}{of}{hint}"
    hint = f"; did you mean '{guess}'?" if guess else ""
    return f"unknown key '{name}' in a --config file{of}{hint}"
