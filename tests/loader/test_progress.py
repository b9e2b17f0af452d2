"""Loading progress: a bar on a terminal, nothing in logs or pipes."""

from __future__ import annotations

import io
import sys

from seekserve.loader.progress import loading


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_a_terminal(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert list(loading(range(3), "loading x")) == [0, 1, 2]
    assert pipe.getvalue() == ""
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(loading(range(3), "loading x")) == [0, 1, 2]
    assert "loading x:" in tty.getvalue() and "/3 [" in tty.getvalue()
