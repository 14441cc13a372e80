"""The animation engine: its frames against Avatar.render (the same avatar, motion and cameras, rendered
frame batch by frame batch without the engine), chunking, streaming, input checks; on CUDA the frames
replayed from the CUDA graph against eager renders, one capture for many calls, and a capacity
overflow (a camera moved close after the capture) detected, rendered correctly and captured again."""
import math

import pytest
import torch

import ffavatar_kernels as fk
from ffavatar.avatar import AnimationEngine, Avatar, front_camera
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import look_at
from test_avatar_core import _motion, _random_avatar

SIZE = 48


@pytest.fixture(scope="module")
def head():
    m = synthetic_head()
    return m, canonical_gaussians(m, levels=0)


def _cameras(T, radius=0.75):
    eyes = torch.tensor([[radius * math.sin(0.2 * i), 0.02, radius * math.cos(0.2 * i)] for i in range(T)])
    return look_at(eyes, torch.tensor([0.0, -0.02, 0.0]).expand(T, 3))


def _reference(a, m, expr, pose, vm, K, tr=None, lit=False, bg=(0.1, 0.2, 0.3)):
    """Avatar.render frame by frame (one camera per frame)."""
    out = []
    for t in range(expr.shape[0]):
        out.append(a.render(m, vm[t], K, SIZE, SIZE, expr[t:t + 1], pose[t:t + 1],
                            translation=None if tr is None else tr[t], lit=lit, background=bg))
    return torch.cat(out)


@pytest.mark.parametrize("lit", [False, True])
def test_engine_matches_avatar_render(head, lit):
    m, g = head
    a = _random_avatar(m, g)
    T = 5
    expr, pose = _motion(m, T)
    vm, tr = _cameras(T), 0.01 * torch.randn(T, 3)
    _, K = front_camera(SIZE, SIZE)
    eng = AnimationEngine(a, m, SIZE, SIZE, batch=2, lit=lit, background=(0.1, 0.2, 0.3))
    assert not eng.uses_graph
    got = eng.render(expr, pose, translation=tr, viewmats=vm)        # 3 chunks: 2 + 2 + 1
    want = _reference(a, m, expr, pose, vm, K, tr, lit=lit)
    assert got.shape == (T, SIZE, SIZE, 3)
    assert (got - want).abs().max().item() < 1e-4
    assert want.std() > 0.05                                          # not an empty picture


def test_engine_default_camera_and_partial_inputs(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    vm, K = front_camera(SIZE, SIZE)
    eng = AnimationEngine(a, m, SIZE, SIZE, batch=4)
    # expression only (n < n_expr: the rest zero), pose None: the front camera, neutral pose
    e = 0.5 * torch.randn(3, 10)
    got = eng.render(e)
    want = a.render(m, vm, K, SIZE, SIZE, torch.nn.functional.pad(e, (0, m.n_expr - 10)), None, background=(0, 0, 0))
    assert (got - want).abs().max().item() < 1e-4
    # the camera can change without a new engine
    vm2 = _cameras(1, radius=0.6)[0]
    eng.set_camera(viewmat=vm2)
    got2 = eng.render(e[:1])
    want2 = a.render(m, vm2, K, SIZE, SIZE, torch.nn.functional.pad(e[:1], (0, m.n_expr - 10)))
    assert (got2 - want2).abs().max().item() < 1e-4 and (got2 - got[:1]).abs().max() > 0.05


def test_stream_and_animate(head):
    m, g = head
    a = _random_avatar(m, g)
    T = 4
    expr, pose = _motion(m, T)
    eng = AnimationEngine(a, m, SIZE, SIZE)
    batch = eng.render(expr, pose)
    frames = list(eng.stream([{"expression": expr[t], "pose": pose[t]} for t in range(2)] +
                             [(expr[t], pose[t]) for t in range(2, T)]))
    assert len(frames) == T and frames[0].shape == (SIZE, SIZE, 3)
    assert (torch.stack(frames) - batch).abs().max().item() < 1e-6
    chunks = list(a.animate(m, expr, pose, SIZE, batch=3))
    assert [c.shape[0] for c in chunks] == [3, 1]
    vm, K = front_camera(SIZE, SIZE)
    assert (torch.cat(chunks) - _reference(a, m, expr, pose, vm.expand(T, 4, 4), K, bg=(0, 0, 0))).abs().max() < 1e-4


def test_engine_input_errors(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    with pytest.raises(TypeError, match="avatar"):
        AnimationEngine("x", m, SIZE, SIZE)
    with pytest.raises(TypeError, match="model"):
        AnimationEngine(a, object(), SIZE, SIZE)
    with pytest.raises(TypeError, match="width"):
        AnimationEngine(a, m, 32.5, SIZE)
    with pytest.raises(ValueError, match="batch"):
        AnimationEngine(a, m, SIZE, SIZE, batch=0)
    with pytest.raises(ValueError, match="graph"):
        AnimationEngine(a, m, SIZE, SIZE, graph="yes")
    with pytest.raises(ValueError, match="graph=True needs a CUDA"):
        AnimationEngine(a, m, SIZE, SIZE, graph=True)
    with pytest.raises(ValueError, match="viewmat expected shape"):
        AnimationEngine(a, m, SIZE, SIZE, viewmat=torch.eye(3))
    with pytest.raises(ValueError, match="background"):
        AnimationEngine(a, m, SIZE, SIZE, background=(0, float("nan"), 0))
    eng = AnimationEngine(a, m, SIZE, SIZE)
    with pytest.raises(ValueError, match="expression has non-finite"):
        eng.render(torch.full((1, m.n_expr), float("nan")))
    with pytest.raises(ValueError, match="translation has non-finite"):
        eng.render(None, None, translation=torch.tensor([0.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match="rotation matrices"):
        eng.render(None, torch.eye(3).expand(1, 5, 3, 3))
    with pytest.raises(ValueError, match="viewmats expected shape"):
        eng.render(torch.zeros(2, m.n_expr), viewmats=torch.eye(4).expand(3, 4, 4))
    with pytest.raises(ValueError, match="translation expected shape"):
        eng.render(torch.zeros(2, m.n_expr), translation=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="pose expected shape"):
        eng.render(None, torch.zeros(7))
    with pytest.raises(ValueError, match="unknown keys"):
        next(eng.stream([{"expr": torch.zeros(m.n_expr)}]))
    with pytest.raises(ValueError, match="one per item"):
        next(eng.stream([{"expression": torch.zeros(2, m.n_expr)}]))
    other = synthetic_head()
    other.v_template = other.v_template + 0.01
    with pytest.raises(ValueError, match="FLAME model"):
        AnimationEngine(a, other, SIZE, SIZE)


def _cuda_ok():
    return torch.cuda.is_available() and fk.has_kernel("rasterize", torch.device("cuda")) and \
        fk.has_kernel("skin_gaussians", torch.device("cuda"))


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ok(), reason="needs the compiled CUDA kernels")
@pytest.mark.parametrize("lit", [False, True])
def test_graph_replay_matches_eager(head, lit):
    m, g = head
    a = _random_avatar(m, g)
    mc, ac = m.to("cuda"), a.to("cuda")
    T = 12
    expr, pose = _motion(m, T)
    vm = _cameras(T)
    eng = AnimationEngine(ac, mc, SIZE, SIZE, batch=4, lit=lit, graph=True)
    eager = AnimationEngine(ac, mc, SIZE, SIZE, batch=4, lit=lit, graph=False)
    got = eng.render(expr, pose, viewmats=vm)
    want = eager.render(expr, pose, viewmats=vm)
    assert eng.captures == 1 and eng.replays == 3
    assert (got - want).abs().max().item() < 1e-4
    # new parameters through the same graph
    expr2, pose2 = _motion(m, 4)
    got2 = eng.render(expr2, pose2)
    assert eng.captures == 1
    assert (got2 - eager.render(expr2, pose2)).abs().max().item() < 1e-4
    # the view of the output buffer (no copy) holds the same frames
    view = eng.render(expr2, pose2, copy=False)
    assert (view - got2).abs().max().item() < 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ok(), reason="needs the compiled CUDA kernels")
def test_graph_capacity_overflow_recaptures(head):
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    mc, ac = m.to("cuda"), a.to("cuda")
    size = 256
    far, near = _cameras(1, radius=3.0)[0], _cameras(1, radius=0.35)[0]
    eng = AnimationEngine(ac, mc, size, size, batch=1, viewmat=far, graph=True)
    eager = AnimationEngine(ac, mc, size, size, batch=1, viewmat=far, graph=False)
    for _ in range(48):                             # the device's count guess decays to the small head's
        eager.render()                              # (it is a decaying high-water mark of all calls)
    eng.render()                                    # captured with the small head's count
    assert eng.captures == 1
    got = eng.render(viewmats=near)                 # many more tile intersections than the capacity
    want = eager.render(viewmats=near)
    assert (got - want).abs().max().item() < 1e-4   # rendered again, the exact way
    eng.render(viewmats=near)
    assert eng.captures == 2                        # and captured again with room for it
    assert (eng.render(viewmats=near) - want).abs().max().item() < 1e-4


class _FakeGraph:
    """Stands in for a captured CUDA graph on the CPU: its replay writes what the test says."""

    def __init__(self, eng, garbage=False, overflow=False):
        self.eng, self.garbage, self.overflow = eng, garbage, overflow

    def replay(self):
        if self.garbage:
            self.eng._out.fill_(0.5)
        else:
            self.eng._compute()
        self.eng._overflow.fill_(self.overflow)


def test_replay_checks_on_cpu(head):
    """The engine's bookkeeping around a replay, with a stand-in graph: the first replay after a
    capture is checked against an eager render (a wrong one turns the graph off with a warning); a
    capacity overflow renders the batch again eagerly and asks for a new capture."""
    m, g = head
    a = _random_avatar(m, g, residuals=False)
    expr, pose = _motion(m, 2)
    want = AnimationEngine(a, m, SIZE, SIZE, batch=2).render(expr, pose)

    eng = AnimationEngine(a, m, SIZE, SIZE, batch=2)
    eng._want_graph, eng._graph, eng._verify_next = True, _FakeGraph(eng, garbage=True), True
    with pytest.warns(RuntimeWarning, match="differ from the eager render"):
        got = eng.render(expr, pose)
    assert (got - want).abs().max() < 1e-4 and not eng.uses_graph and eng._graph is None

    eng = AnimationEngine(a, m, SIZE, SIZE, batch=2)
    eng._want_graph, eng._graph = True, _FakeGraph(eng, garbage=True, overflow=True)
    got = eng.render(expr, pose)                     # overflow: rendered again, the graph dropped
    assert (got - want).abs().max() < 1e-4 and eng._graph is None and eng.uses_graph
    with pytest.warns(RuntimeWarning, match="capturing the CUDA graph failed"):
        got = eng.render(expr, pose)                 # the new capture fails on the CPU: eager from now on
    assert (got - want).abs().max() < 1e-4 and not eng.uses_graph
