"""Add videos without labels to a labelled feature file: ``python -m data_prep.add_unlabelled``.

::

    python -m data_prep.add_unlabelled --base data/charades.h5 --extra data/extra.h5 \\
        --out data/charades_plus.h5 [--prefix extra_]

The recipe for videos without labels (``experiments/unlabelled.yaml``) reads them from
subset ``unlabelled`` of the student's own feature file. A dataset converter writes the
labelled file; videos nobody annotated, featurised with the same extractors, usually come
as a second file: the generic converter without ``--annotations`` writes one (an
unlabelled file), and any feature file will do. This tool writes a new file holding

* every video of ``--base`` as it is (features, labels, segments, attrs), then
* every video of each ``--extra`` file, of any subset, as a video of subset ``unlabelled``:
  the base's modalities only, in the base's feature dtype, the video's duration and attrs,
  and **no labels or segments** (had the extra file any, a student would never read them;
  how many were left out is reported).

The base's classes and root attrs are kept; the file records where its unlabelled videos
came from (root attr ``unlabelled_sources``, JSON) and the base's identity (root attr
``unlabelled_base``, :data:`kd_detect.data.format.UNLABELLED_BASE`). Its other videos are
the base's, bit for bit, so a teacher trained on the base is a teacher of the new file:
``make train`` reuses it (``kd_detect.lab.runner``) instead of retraining it on the new
file, as long as the base is unchanged.

Refused, one line naming the file, the video and the field (nothing is written):
``--out`` naming an input; a base that is itself an unlabelled file (no classes to
learn); an extra file without one of the base's modalities, or with another feature dim
for one (the same extractor is needed: features of another network are another
space); a video id that is already written (the base's, or an earlier extra file's:
give ``--prefix``). Modalities of an extra file that the base lacks are dropped and
reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data_prep._common import ConversionError, ConversionSummary, interrupted, progress_iter
from kd_detect.data.format import (
    FORMAT_ATTR,
    LABELS,
    SEGMENTS,
    UNLABELLED,
    UNLABELLED_BASE,
    VIDEOS_GROUP,
    FeatureFile,
    FeatureFileWriter,
    VideoRecord,
)
from kd_detect.errors import KdDetectError
from kd_detect.io import ensure_writable_file, file_identity, refuse_inputs

PROG = "data_prep.add_unlabelled"
#: root attrs the writer sets itself
WRITER_ATTRS = (FORMAT_ATTR, "classes", "modalities", "labelled")
SOURCES_ATTR = "unlabelled_sources"


def _dtype(ff: FeatureFile) -> str:
    """The feature dtype of ``ff`` (its first video's first modality; float16 when empty)."""
    if not ff.video_ids:
        return "float16"
    return str(ff.h5[VIDEOS_GROUP][ff.video_ids[0]][ff.modalities[0]].dtype)


def _check_extra(extra: FeatureFile, base: FeatureFile) -> list[str]:
    """The extra file's modalities the base lacks (dropped); raises when it lacks one of the
    base's or has another feature dim for one."""
    for m in base.modalities:
        if m not in extra.modalities:
            raise ConversionError(f"{extra.path}: modality {m!r} missing: the base {base.path} has "
                                  f"{base.modalities}, and the student and its teacher read them all")
        want, got = base.modality_dims.get(m), extra.modality_dims.get(m)
        if want is not None and got is not None and want != got:
            raise ConversionError(f"{extra.path}: modality {m!r} has feature dim {got}, the base {base.path} has "
                                  f"{want}: the extra videos need the base's extractor")
    return [m for m in extra.modalities if m not in base.modalities]


def add_unlabelled(base: Path, extras: Sequence[Path], out: Path, prefix: str = "",
                   compression: str | None = None, progress: bool | None = None) -> ConversionSummary:
    """Write ``out``: ``base``'s videos, then ``extras``' as subset ``unlabelled`` (module doc)."""
    refuse_inputs(out, [base, *extras])
    if "/" in prefix:
        raise ConversionError(f"--prefix {prefix!r}: video ids may not contain '/' (HDF5 groups)")
    b = FeatureFile(base)
    if int(b.attrs.get("labelled", 1)) == 0:
        raise ConversionError(f"{base}: an unlabelled file (root attr labelled = 0) cannot be the base: "
                              "give the labelled file as --base and this one as --extra")
    files = [FeatureFile(e) for e in extras]
    dropped = {str(f.path): _check_extra(f, b) for f in files}
    attrs = {k: v for k, v in b.attrs.items() if k not in WRITER_ATTRS}
    attrs[UNLABELLED_BASE] = json.dumps({"path": str(base), **file_identity(base)})
    attrs[SOURCES_ATTR] = json.dumps([{"file": str(f.path), "videos": len(f.video_ids), "prefix": prefix}
                                      for f in files])
    summary = ConversionSummary(PROG, out, len(b.classes), list(b.modalities))
    dims = dict(b.modality_dims)
    written: dict[str, Path] = {}
    with FeatureFileWriter(out, b.classes, b.modalities, dtype=_dtype(b), attrs=attrs,
                           compression=compression) as writer:
        for vid in progress_iter(b.video_ids, f"{base}", progress):
            record = b.record(vid)
            writer.add(record)
            summary.segments_kept += len(record.segments)
            written[vid] = b.path
            summary.per_subset[b.subsets[vid]] += 1
        for f in files:
            for vid in progress_iter(f.video_ids, f"{f.path}", progress):
                new = prefix + vid
                if new in written:
                    raise ConversionError(f"{f.path}: video {vid!r}: id {new!r} is already in {written[new]}; "
                                          "give --prefix to tell the extra videos apart")
                features = f.read(vid, b.modalities)
                for m, arr in features.items():
                    dim = dims.setdefault(m, arr.shape[-1])
                    if arr.ndim != 2 or arr.shape[1] != dim:
                        raise ConversionError(f"{f.path}: video {vid!r}: modality {m!r} has shape {arr.shape}, "
                                              f"expected (T, {dim}) as in the base")
                group = f.h5[VIDEOS_GROUP][vid]
                if LABELS in group or SEGMENTS in group:
                    summary.note(new, f"labels of {f.path} not copied (never read in subset {UNLABELLED!r})")
                if dropped[str(f.path)]:
                    summary.note(new, f"modalities {dropped[str(f.path)]} of {f.path} dropped (the base has none)")
                video_attrs = {k: v for k, v in group.attrs.items() if k not in ("subset", "duration")}
                if f.subsets[vid] != UNLABELLED:
                    video_attrs["subset_in_source"] = f.subsets[vid]
                writer.add(VideoRecord(new, UNLABELLED, f.durations[vid], features, np.zeros((0, 3)), None,
                                       video_attrs))
                written[new] = f.path
                summary.per_subset[UNLABELLED] += 1
    summary.videos_written = len(written)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the labelled feature file (kept as it is)")
    parser.add_argument("--extra", type=Path, nargs="+", required=True,
                        help="feature files whose videos join as subset 'unlabelled'")
    parser.add_argument("--out", type=Path, required=True, help="the new feature file (never an input)")
    parser.add_argument("--prefix", default="", help="prepended to the extra videos' ids (default none)")
    parser.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none", help="HDF5 compression")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: only when stderr is a terminal)")
    args = parser.parse_args(argv)
    try:
        ensure_writable_file(args.out)
        summary = add_unlabelled(args.base, args.extra, args.out, args.prefix,
                                 None if args.compression == "none" else args.compression, args.progress)
    except KdDetectError as err:
        raise SystemExit(f"{PROG}: error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(interrupted(PROG, args.out)) from None
    print(summary.format())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
