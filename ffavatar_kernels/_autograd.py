"""Low-overhead autograd for the composite Python APIs.

torch.library's generic autograd wrapper (``register_autograd``) costs tens of µs of Python per
differentiable call (it rebuilds the argument list from the schema every time), which is most of the
host time of a small call. ``rasterize`` calls its registered ops through :func:`call` instead
(``flame_lbs`` / ``skin_gaussians`` go further: one Function per public call,
``_flame_lbs_autograd.py``): an ``autograd.Function`` built from the *same*
setup_context / backward formulas that are registered for direct callers, with the kernel reached
below the Autograd key (as the generic wrapper does). Under torch.compile the registered op is
called, so tracing sees the op with its registered autograd.
"""
from __future__ import annotations

import torch


def function(name: str, op, setup, backward) -> type:
    """An autograd.Function running ``op`` below the Autograd key with ``setup(ctx, inputs, output)``
    and ``backward(ctx, *grads)`` (the register_autograd formulas)."""
    def forward(ctx, *inputs):
        with torch._C._AutoDispatchBelowAutograd():
            out = op(*inputs)
        setup(ctx, inputs, out)
        return out

    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def call(op, fn: type, tensors, args):
    """``op(*args)`` with autograd through ``fn`` when any of ``tensors`` (the differentiable inputs,
    None allowed) requires grad; below the Autograd key otherwise."""
    if torch.compiler.is_compiling():
        return op(*args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return fn.apply(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)
