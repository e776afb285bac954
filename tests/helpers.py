"""What the tests share: the backends this machine is expected to run, written out, and the (device, backend) cases
built from them. Test files import this module, never each other.

The expectation does not come from the code under test (`available_backends`, `unavailable_reason`): a backend that
stops loading fails its cases instead of dropping out of a parametrized loop unnoticed.
  CPU tensors:   torch; triton through Triton's interpreter when TRITON_INTERPRET is on (conftest.py turns it on
                 where there is no GPU); cpu_twin, built with a C++ compiler and ninja (an install requirement).
  CUDA tensors:  on a GPU machine, cuda (the extension, prebuilt or JIT-built), triton (compiled) and torch.
Each list is in the order "auto" prefers, the order `available_backends` gives.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
# The spellings Triton reads as true (triton.knobs.getenv_bool); read after conftest.py has set the variable.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")

FUSED = ("triton", "cuda", "cpu_twin")
# The backends the suite runs on each device type, wherever they are expected to load.
DEVICE_BACKENDS = {"cpu": ("torch", "triton", "cpu_twin"), "cuda": ("torch", "triton", "cuda")}
EXPECTED_BACKENDS = {
    "cpu": ["torch"] + ["triton"] * TRITON_INTERPRET + ["cpu_twin"],
    "cuda": ["cuda", "triton", "torch"] if CUDA else [],
}

NO_CUDA = "no CUDA device on this machine"
needs_cuda = pytest.mark.skipif(not CUDA, reason=NO_CUDA)


def not_expected_reason(device, backend):
    """Why `backend` is not expected to run on `device` here (the skip reason of its cases)."""
    if device == "cuda":
        return NO_CUDA
    assert backend == "triton", f"{backend} on {device} is expected wherever the tests run"
    return ("TRITON_INTERPRET is off (conftest.py turns it on only where there is no GPU): Triton runs CPU tensors "
            "only through its interpreter")


def device_backend_cases(backends=("torch", "triton", "cuda", "cpu_twin"), devices=("cpu", "cuda")):
    """pytest params (device, backend), id "cpu-triton", for each of `backends` the suite runs on each of `devices`.
    A pair expected on this machine carries no mark, so a backend that fails to load fails the test; the others
    skip with the reason they are not expected here."""
    cases = []
    for device in devices:
        for backend in (name for name in DEVICE_BACKENDS[device] if name in backends):
            expected = backend in EXPECTED_BACKENDS[device]
            marks = [] if expected else [pytest.mark.skip(reason=not_expected_reason(device, backend))]
            cases.append(pytest.param(device, backend, id=f"{device}-{backend}", marks=marks))
    return cases
