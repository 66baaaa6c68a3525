"""predict, export and cache-teacher refuse to write an output over one of their inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kd_detect.apps import main as run_app

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("argv", [
    ["predict", "--ckpt", "{ckpt}", "--data", "{data}", "--out", "{data}"],
    ["predict", "--ckpt", "{ckpt}", "--data", "{data}", "--out", "{tmp}/p.h5", "--segments", "{ckpt}"],
    ["export", "--ckpt", "{ckpt}", "--out", "{ckpt}"],
    ["cache-teacher", "--ckpt", "{ckpt}", "--data", "{data}", "--out", "{link}"],
])
def test_output_over_an_input_is_one_line_and_changes_nothing(argv, tmp_path, capsys):
    ckpt = shutil.copy(FIXTURES / "student.ckpt", tmp_path / "s.ckpt")
    data = tmp_path / "d.h5"
    data.write_bytes(b"precious")
    (tmp_path / "link.h5").symlink_to(data)
    before = {p: Path(p).read_bytes() for p in (ckpt, data)}
    args = [a.format(ckpt=ckpt, data=data, tmp=tmp_path, link=tmp_path / "link.h5") for a in argv]
    with pytest.raises(SystemExit) as exc:
        run_app(args[0], args[1:])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kd-detect {args[0]}: error: ") and "refusing to write the output over the input" in err
    assert len(err.splitlines()) == 1
    assert {p: Path(p).read_bytes() for p in (ckpt, data)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "link.h5", "s.ckpt"]
