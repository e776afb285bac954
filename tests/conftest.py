"""Test-suite set-up.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; TRITON_INTERPRET must be set before
triton is first imported, which is why this happens here, before any test module loads. A GPU machine runs the
compiled kernels (set TRITON_INTERPRET=1 yourself to force the interpreter there). helpers.py reads the variable
to know whether "triton" must run on CPU tensors here.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def cudnn_flags_restored():
    """train.main sets torch.backends.cudnn.benchmark (process-wide) on a GPU: the next test in the same process
    starts from the flags as they were."""
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture
def one_cpu_thread():
    """The test runs on one CPU thread (torch's count restored after): what the measurements and bugs it pins were
    seen with (oneDNN's buffers and kernels differ with the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
