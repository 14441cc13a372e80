"""Environment switches: all listed in one place (ffavatar_kernels/_env.py, csrc/common/env.h), read
at every call that uses them."""
import os
import re

import pytest
import torch

from ffavatar_kernels import _env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources():
    for top in ("ffavatar", "ffavatar_kernels", "csrc"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".py", ".cpp", ".cu", ".cuh", ".h")):
                    yield os.path.join(d, f)


def test_every_switch_is_listed_and_read_in_one_place():
    readers = {os.path.join(ROOT, "ffavatar_kernels", "_env.py"), os.path.join(ROOT, "csrc", "common", "env.h")}
    seen = set()
    for path in _sources():
        text = open(path).read()
        names = set(re.findall(r"FFAVATAR_[A-Z0-9_]+", text))
        seen |= names
        if path not in readers:   # elsewhere only mentions (docs, comments), never a read
            assert not re.search(r"(getenv|environ)[^\n]*FFAVATAR_", text), path
    switches = {n for n in seen if n not in ("FFAVATAR_WITH_CUDA", "FFAVATAR_OPS", "FFAVATAR_CHECK_CUDA")
                and not n.startswith(("FFAVATAR_API", "FFAVATAR_BUILD", "FFAVATAR_TORCH", "FFAVATAR_CUDA"))}
    assert switches <= set(_env.SWITCHES), switches - set(_env.SWITCHES)
    assert len(_env.SWITCHES) == 9
    header = open(os.path.join(ROOT, "csrc", "common", "env.h")).read()
    for name in ("FFAVATAR_NO_PDL", "FFAVATAR_BIN_SYNC", "FFAVATAR_NO_SPLIT", "FFAVATAR_NO_BIN_GRAPH",
                 "FFAVATAR_BIN_CUB_SORT"):
        assert name in header and name in _env.SWITCHES


def test_attention_precision_read_per_call(monkeypatch):
    from ffavatar_kernels.cross_attention import cross_attention
    from ffavatar_kernels.reference.cross_attention import cross_attention as ref
    if not _env.triton_interpret():
        pytest.skip("the interpreted Triton kernels run only under TRITON_INTERPRET=1 on the CPU")
    q, k = torch.randn(1, 1, 20, 32), torch.randn(1, 1, 24, 32)
    want = ref(q.double(), k.double(), k.double())
    monkeypatch.setenv("FFAVATAR_ATTN_F32_DOT", "ieee")
    got = cross_attention(q, k, k)
    assert ((got.double() - want).norm() / want.norm()) < 1e-5
    monkeypatch.setenv("FFAVATAR_ATTN_F32_DOT", "tf32")            # not a mode: named in the error
    with pytest.raises(ValueError, match="FFAVATAR_ATTN_F32_DOT"):
        cross_attention(q, k, k)
