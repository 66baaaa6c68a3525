"""Test helpers (not tests): fake public releases for the converters (``fixtures_release``),
the DDP probe callback (``ddp_probe``, found through PYTHONPATH by the spawned runs) and
the tiny head shared by the module tests."""

#: a 2-layer, 16-wide PDAN: the smallest head the module tests train
TINY_HEAD = {"class_path": "kd_detect.models.heads.PDAN", "init_args": {"hidden": 16, "num_layers": 2}}


def one_line_failure(main, argv, capsys, prog: str | None = None) -> str:
    """Run a command's ``main(argv)``, check it exits 1 with exactly one stderr line and no
    traceback (starting ``<prog>: error: `` when ``prog`` is given), and return that line."""
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if prog is not None:
        assert err.startswith(f"{prog}: error: ")
    return err
