"""The xdist hook of tests/conftest.py: a worker whose CUDA context is lost ends itself."""

import types

import conftest


class _Outcome:
    def __init__(self, exc):
        self.excinfo = None if exc is None else (type(exc), exc, None)


def _run(exc, monkeypatch, worker=True):
    exits = []
    monkeypatch.setattr(conftest.os, "_exit", exits.append)
    if worker:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    else:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    gen = conftest.pytest_runtest_call(types.SimpleNamespace(nodeid="t::x"))
    next(gen)
    try:
        gen.send(_Outcome(exc))
    except StopIteration:
        pass
    return exits


def test_sticky_cuda_error_ends_the_worker(monkeypatch):
    err = RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
    assert _run(err, monkeypatch) == [3]


def test_other_failures_and_single_process_runs_continue(monkeypatch):
    assert _run(AssertionError("rel err 0.3"), monkeypatch) == []
    assert _run(None, monkeypatch) == []
    err = RuntimeError("CUDA error: an illegal memory access was encountered")
    assert _run(err, monkeypatch, worker=False) == []  # without xdist nobody would restart it
