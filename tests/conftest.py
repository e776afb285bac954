"""Test-suite set-up.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; TRITON_INTERPRET must be set before
triton is first imported, which is why this happens here, before any test module loads. A GPU machine runs the
compiled kernels (set TRITON_INTERPRET=1 yourself to force the interpreter there).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
