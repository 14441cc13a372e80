"""Shared pieces of the reliability tests (tests/test_reliability_*.py, issue 19 item 1)."""
import os

import pytest

NAN, INF = float("nan"), float("inf")
NONFINITE = [NAN, INF, -INF]
INTERP = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _params(cases):
    """pytest params with the case name as id (cases: tuples or pytest.param, name first)."""
    return [pytest.param(*c, id=c[0]) if type(c) is tuple else pytest.param(*c.values, marks=c.marks, id=c.values[0])
            for c in cases]


def _raises(exc, name, fn):
    """fn() raises exc and the message starts with the argument's name (``name: ...``)."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert name in msg, f"error does not name {name!r}: {type(info.value).__name__}: {msg}"
    return msg
