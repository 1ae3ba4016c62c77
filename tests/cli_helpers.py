"""Assertions on what the ``cxrgen`` command prints when it fails."""

from __future__ import annotations


def one_error_line(capsys) -> str:
    """The CLI's stderr holds exactly one 'cxrgen ...' line and no traceback; returns that line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cxrgen")]  # progress bars of other libraries aside
    assert len(lines) == 1, err
    return lines[0]
