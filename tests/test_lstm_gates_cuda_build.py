"""The GPU side of lstm_gates builds where CI can check it, with no GPU: nvcc compiles the CUDA kernels for sm_80
and sm_90 (the .cu files include no PyTorch header), Triton compiles its kernels ahead of time for the same
targets, and setup.py builds the extension only when asked. Running the kernels is tested in test_lstm_gates.py
(on a GPU; on the CPU through Triton's interpreter and the CUDA math's CPU twin)."""
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools
import torch
import torch.utils.cpp_extension

from convlstm.ops.lstm_gates import backends, cuda
from convlstm.ops.lstm_gates.stamp import CUDA_SOURCES, sources_sha
from helpers import gpu_test

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "convlstm" / "ops" / "lstm_gates" / "csrc"
# The files nvcc sees: they must compile without PyTorch's headers (absent from the CPU wheel).
TORCH_FREE = ["lstm_gates.cu", "lstm_gates.cuh", "lstm_gates.h"]
# Mangled template arguments: (gate_t, state_t, acc_t) for each dtype pair, then index_t, int32_t (i) or int64_t (l).
# The gate order is a runtime argument (Shape::o_slot), so it adds no instantiation.
INSTANTIATIONS = [types + index for types in ("fff", "ddd", "6__halfS2_f", "13__nv_bfloat16S2_f", "6__halfff",
                                              "13__nv_bfloat16ff") for index in "il"]


@pytest.mark.parametrize("name", TORCH_FREE)
def test_cuda_sources_include_no_torch_header(name):
    includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', (CUDA_DIR / name).read_text(), flags=re.M)
    assert includes, f"{name} has no #include lines: the pattern is wrong"
    offending = [i for i in includes if re.match(r"(torch|ATen|c10|pybind11)/", i) or i.startswith("torch")]
    assert not offending, f"{name} includes PyTorch headers: {offending}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_kernels_compile_with_nvcc_for_sm80_and_sm90(tmp_path):
    """nvcc -c for A100 (sm_80) and H100/H200 (sm_90), warnings as errors; the object holds code for both
    architectures and every (gates, state) dtype pair and index type of the forward and backward kernels."""
    obj = tmp_path / "lstm_gates.o"
    cmd = ["nvcc", "-c", "-O3", "-std=c++17", "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           str(CUDA_DIR / "lstm_gates.cu"), "-o", str(obj)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    binary = obj.read_bytes()
    assert b"sm_80" in binary and b"sm_90" in binary
    for kernel in ("forward_kernel", "backward_kernel"):
        for types in INSTANTIATIONS:
            assert f"{kernel}I{types}EEv".encode() in binary, f"{kernel}<{types}> missing"


# Compiles the Triton kernels for a GPU target without a GPU (ASTSource + triton.compile, ptxas from the Triton
# wheel); run in a fresh interpreter because this one has TRITON_INTERPRET=1 when there is no GPU.
TRITON_AOT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from convlstm.ops.lstm_gates.triton_kernels import lstm_gates_bwd_kernel, lstm_gates_fwd_kernel

def compile_kernel(fn, pointers, constexprs, arch):
    signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i64") for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))
    return len(kernel.asm["cubin"])

for arch in (80, 90):
    for gate, state, channels_last, peephole, o_slot in (("fp32", "fp32", False, False, 2),
                                                          ("bf16", "fp32", True, True, 3),
                                                          ("fp64", "fp64", False, True, 2)):
        acc = "fp64" if state == "fp64" else "fp32"
        pointers = dict(gates_ptr="*" + gate, grad_gates_ptr="*" + gate, w_ci_ptr="*" + acc, w_cf_ptr="*" + acc,
                        w_co_ptr="*" + acc)
        pointers.update({name: "*" + state for name in ("c_prev_ptr", "h_next_ptr", "c_next_ptr", "grad_h_ptr",
                                                         "grad_c_ptr", "grad_c_prev_ptr")})
        constexprs = dict(CHANNELS_LAST=channels_last, HAS_PEEPHOLE=peephole, ACC_FP64=acc == "fp64", O_SLOT=o_slot,
                          ROWS=16 if channels_last else 1, COLS=64 if channels_last else 1024)
        forward = compile_kernel(lstm_gates_fwd_kernel, pointers, constexprs, arch)
        backward = compile_kernel(lstm_gates_bwd_kernel, pointers,
                                  dict(constexprs, HAS_GRAD_H=True, HAS_GRAD_C=not peephole), arch)
        print(f"sm_{arch} {gate}/{state} forward {forward} B backward {backward} B")
"""


def test_triton_kernels_compile_for_sm80_and_sm90():
    """The compiled (not interpreted) Triton kernels build to cubins for A100 and H100/H200 on this machine."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9 warns when this is unset
    result = subprocess.run([sys.executable, "-c", TRITON_AOT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6, result.stdout
    for line in lines:
        forward, backward = (int(n) for n in re.findall(r"(\d+) B", line))
        assert forward > 0 and backward > 0, line


class SetupRecorder:
    """Stands in for setuptools.setup and torch's CUDAExtension: records what setup.py would build."""

    def __init__(self, monkeypatch):
        self.kwargs = None
        self.extensions = []
        monkeypatch.setattr(setuptools, "setup", self.setup)
        monkeypatch.setattr(torch.utils.cpp_extension, "CUDAExtension", self.cuda_extension)

    def setup(self, **kwargs):
        self.kwargs = kwargs

    def cuda_extension(self, name, sources, **kwargs):
        self.extensions.append((name, sources))
        self.extension_kwargs = kwargs
        return name


def run_setup(monkeypatch, **env):
    for name in ("CONVLSTM_FORCE_BUILD", "CONVLSTM_SKIP_CUDA_BUILD"):
        monkeypatch.delenv(name, raising=False)
    # setup.py defaults the architecture list in os.environ; monkeypatch restores it after the test.
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    recorder = SetupRecorder(monkeypatch)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return recorder


def test_setup_builds_cuda_extension_only_with_cuda_torch_and_nvcc(monkeypatch):
    """Plain `pip install -e .`: on this CPU-torch machine nothing is built (fast install); with CUDA torch and
    nvcc the extension is."""
    recorder = run_setup(monkeypatch)
    expected = torch.version.cuda is not None and shutil.which("nvcc") is not None
    assert bool(recorder.kwargs.get("ext_modules")) == expected
    assert recorder.kwargs["install_requires"][0].startswith("torch")


def test_setup_force_build(monkeypatch):
    recorder = run_setup(monkeypatch, CONVLSTM_FORCE_BUILD="TRUE")
    sources = ["convlstm/ops/lstm_gates/csrc/lstm_gates_cuda.cpp", "convlstm/ops/lstm_gates/csrc/lstm_gates.cu"]
    assert recorder.extensions == [("convlstm.ops.lstm_gates._cuda", sources)]
    assert recorder.kwargs["ext_modules"] == ["convlstm.ops.lstm_gates._cuda"]
    assert "build_ext" in recorder.kwargs["cmdclass"]
    for source in recorder.extensions[0][1]:
        assert (ROOT / source).is_file()
    # PTX of the newest architecture, so a newer GPU JIT-compiles it instead of finding no kernel image; the
    # binding carries the sources' stamp, so a stale build is told from a current one.
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"
    flag = f"-DLSTM_GATES_SOURCES_SHA={sources_sha(CUDA_SOURCES)}"
    assert recorder.extension_kwargs["extra_compile_args"] == {"cxx": ["-O3", flag], "nvcc": ["-O3", flag]}


def test_setup_skip_cuda_build(monkeypatch):
    recorder = run_setup(monkeypatch, CONVLSTM_SKIP_CUDA_BUILD="TRUE")
    assert "ext_modules" not in recorder.kwargs and recorder.extensions == []


def test_setup_force_and_skip_together_is_an_error(monkeypatch):
    with pytest.raises(RuntimeError, match="CONVLSTM_FORCE_BUILD and CONVLSTM_SKIP_CUDA_BUILD are both set"):
        run_setup(monkeypatch, CONVLSTM_FORCE_BUILD="TRUE", CONVLSTM_SKIP_CUDA_BUILD="TRUE")


@gpu_test
def test_cuda_extension_loads_prebuilt_or_jit():
    """On a GPU the extension loads (setup.py's build, else a JIT build with ninja) and has both entry points."""
    from convlstm.ops.lstm_gates.cuda import extension
    ext = extension()
    assert hasattr(ext, "forward") and hasattr(ext, "backward")


def fake_extension(monkeypatch, sources_sha_value):
    """A prebuilt `_cuda` module carrying `sources_sha_value` (None: built without a stamp)."""
    module = type(sys)("convlstm.ops.lstm_gates._cuda")
    if sources_sha_value is not None:
        module.sources_sha = sources_sha_value
    monkeypatch.setattr(cuda.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cuda.importlib, "import_module", lambda name: module)
    return module


def test_a_prebuilt_extension_from_other_sources_is_not_loaded(monkeypatch, caplog):
    """setup.py's build from the current sources is used; one from edited sources (or with no stamp) is passed
    over for a JIT build, saying why."""
    module = fake_extension(monkeypatch, sources_sha(CUDA_SOURCES))
    assert cuda._prebuilt() is module
    for stale in ("0123456789abcdef", None):
        fake_extension(monkeypatch, stale)
        with caplog.at_level("WARNING"):
            assert cuda._prebuilt() is None
        assert f"built from other sources (stamp {stale}" in caplog.text and "JIT-building it instead" in caplog.text


def test_no_nvcc_makes_the_cuda_backend_unavailable_without_a_build(monkeypatch):
    """Without a current prebuilt extension and without nvcc, extension() raises at once with the reason (no build
    is tried, so no process pays for a failing one); runs_on reports it as the backend's reason."""
    import torch.utils.cpp_extension as cpp_extension
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(cuda, "_prebuilt", lambda: None)
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("a build was tried"))
    cuda.extension.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="nvcc is not found"):
            cuda.extension()
        pretend_gpu(monkeypatch)
        assert "nvcc is not found (CUDA_HOME None" in cuda.runs_on(torch.device("cuda"))
    finally:
        cuda.extension.cache_clear()


def pretend_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a newer GPU")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


def test_kernels_that_do_not_launch_make_auto_fall_back_to_triton(monkeypatch, caplog):
    """An extension that loads but whose kernels have no image for this GPU (built for 8.0;9.0 without PTX, on a
    newer GPU): runs_on launches a one-element forward, reports the error, and "auto" picks Triton, logging why."""
    class NoKernelImage:
        @staticmethod
        def forward(*args):
            raise RuntimeError("lstm_gates: CUDA kernel launch failed: no kernel image is available for execution "
                               "on the device")
    pretend_gpu(monkeypatch)
    monkeypatch.setattr(torch, "zeros", lambda *shape, device=None: torch.empty(0))  # no CUDA tensor on a CPU
    monkeypatch.setattr(cuda, "extension", lambda: NoKernelImage)
    backends.unavailable_reason.cache_clear()
    backends._log_fallback.cache_clear()
    try:
        reason = backends.unavailable_reason("cuda", torch.device("cuda"))
        assert reason.startswith("the cuda extension's kernels do not run on a newer GPU (sm_120): lstm_gates: CUDA "
                                 "kernel launch failed: no kernel image"), reason
        if backends.unavailable_reason("triton", torch.device("cuda")) is None:  # Triton installed
            with caplog.at_level("WARNING"):
                assert backends.resolve("auto", "cuda")[0] == "triton"
            assert "backend auto runs triton on cuda: cuda is unavailable: the cuda extension's kernels do not " \
                   "run on a newer GPU" in caplog.text
    finally:
        backends.unavailable_reason.cache_clear()
        backends._log_fallback.cache_clear()
