"""pytest hooks shared by the suite.

On a GPU, a kernel that faults (``an illegal memory access was encountered``) leaves the
CUDA context of its process unusable: every later test in that process fails with the
same error, which hides which tests are really wrong (the first H200 run showed 127
failures from 4 faulting cases). Under pytest-xdist such a worker ends itself right after
the faulting test, so xdist reports that test as crashed and starts a fresh worker for the
rest (``--max-worker-restart``, unlimited by default with ``-n``).
"""

import os

import pytest

#: Messages of CUDA errors after which the process's context is unusable.
STICKY_CUDA_ERRORS = ("illegal memory access", "unspecified launch failure", "illegal instruction",
                      "misaligned address")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    if outcome.excinfo is None or "PYTEST_XDIST_WORKER" not in os.environ:
        return
    message = str(outcome.excinfo[1])
    if any(m in message for m in STICKY_CUDA_ERRORS):
        print(f"\n{item.nodeid}: {message.splitlines()[0]} -- ending this worker (its CUDA context is lost)",
              flush=True)
        os._exit(3)
