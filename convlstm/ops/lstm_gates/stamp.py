"""The stamp of the compiled extensions' sources: a hash of their files, passed to the compiler as a -D flag.

Two uses. torch's cpp_extension.load() rebuilds when the sources or the flags change but does not look at included
headers, so the flag makes an edit of the shared math rebuild the JIT builds. And the CUDA binding exports the stamp it
was built with (`sources_sha`), so a prebuilt extension left from older sources (an editable install edited since)
is told from a current one: cuda.py JIT-builds instead of running stale kernels. Torch-free, so setup.py reads it
with runpy before the package can import.
"""
import hashlib
from pathlib import Path

SOURCE_DIR = Path(__file__).parent / "csrc"
# What the CUDA extension is built from: the binding, the launchers and every header they include.
CUDA_SOURCES = ("lstm_gates_cuda.cpp", "lstm_gates.cu", "lstm_gates.cuh", "lstm_gates.h", "lstm_gates_torch.h")


def sources_sha(names, source_dir=SOURCE_DIR) -> str:
    """16 hex digits of a hash over the files `names` of `source_dir`, in order."""
    return hashlib.sha1(b"".join((Path(source_dir) / name).read_bytes() for name in names)).hexdigest()[:16]


def stamp_flag(names, source_dir=SOURCE_DIR) -> str:
    """The compiler flag defining LSTM_GATES_SOURCES_SHA as the files' hash (a C string once stringified)."""
    return f"-DLSTM_GATES_SOURCES_SHA={sources_sha(names, source_dir)}"
