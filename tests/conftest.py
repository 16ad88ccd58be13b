import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the variable
# must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (modules opt in with ``pytestmark``): two threads on
    a loaded two-core machine are several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_runtest_logreport(report):
    """With SPECTFORMER_STREAM_FAILURES=1, print each failure's traceback the moment it
    happens. A GPU session runs the tests under a hard time limit; pytest prints failures
    only at the end, so a run cut short would otherwise show a bare ``F``."""
    if report.failed and os.environ.get("SPECTFORMER_STREAM_FAILURES") == "1":
        print(f"\n=== FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n",
              file=sys.stderr, flush=True)
