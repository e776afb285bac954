"""The backend choice and the package's shape: one dtype rule shared with C++, the backend resolved once per module,
no import circle, every backend importable from a plain checkout."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlstm import ConvLSTM, EncoderDecoderConvLSTM
from convlstm.ops.lstm_gates import backends
from convlstm.ops.lstm_gates.op import KERNEL_DTYPES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "convlstm"
DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("state", list(DTYPES), ids=[f"state-{name}" for name in DTYPES])
@pytest.mark.parametrize("gate", list(DTYPES), ids=[f"gates-{name}" for name in DTYPES])
def test_lstm_gates_dtype_rule_matches_cpp(gate, state):
    """op.KERNEL_DTYPES is the rule; the C++ bindings' check (csrc/lstm_gates_torch.h, shared by the CUDA binding and
    the CPU twin) accepts exactly those pairs."""
    reason = backends.unavailable_reason("cpu_twin", torch.device("cpu"))
    if reason:
        pytest.fail(f"the cpu_twin backend is expected on every machine of this project: {reason}")
    from convlstm.ops.lstm_gates.cpu_twin import extension
    gates, c_prev = torch.randn(1, 8, 3, 3, dtype=DTYPES[gate]), torch.randn(1, 2, 3, 3, dtype=DTYPES[state])
    if (DTYPES[gate], DTYPES[state]) in KERNEL_DTYPES:
        h_next, _ = extension().forward(gates, c_prev, None, None, None, False, 2)
        assert h_next.dtype == DTYPES[state]
    else:
        with pytest.raises(RuntimeError, match="unsupported dtype pair"):
            extension().forward(gates, c_prev, None, None, None, False, 2)


@pytest.fixture
def resolutions(monkeypatch):
    """Counts the calls of backends.resolve, what turns a backend name into a gate function."""
    calls = []
    resolve = backends.resolve

    def counting(backend, device):
        calls.append((backend, torch.device(device)))
        return resolve(backend, device)

    monkeypatch.setattr(backends, "resolve", counting)
    return calls


@pytest.mark.parametrize("backend", ["torch", "triton", "cpu_twin"])
def test_training_step_resolves_no_backend(resolutions, backend):
    """Cells resolve their backend when built and when moved, once each; forward and backward resolve nothing."""
    model = EncoderDecoderConvLSTM(nf=4, in_chan=1, backend=backend)
    assert len(resolutions) == 4  # one per cell
    model.to("cpu")
    assert len(resolutions) == 8
    del resolutions[:]
    x = torch.rand(2, 3, 1, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, future_seq=2).float().mean().backward()
    assert resolutions == []
    assert model.head_per_frame == (backend != "torch")
    assert all(cell.fused == (backend != "torch") for cell in model.children() if hasattr(cell, "fused"))


def test_cell_named_for_an_absent_device_fails_on_use_with_the_reason():
    """A cell built on the CPU for "cuda" can still be built (and moved to a GPU later); a forward on the CPU names
    the problem."""
    stack = ConvLSTM(1, 2, (3, 3), 1, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available for device cpu"):
        stack(torch.rand(1, 2, 1, 4, 4))


def _imports(path: Path, module: str):
    """Modules of the package that `path` (module `module`) imports anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("convlstm")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").startswith("convlstm"):
                target = node.module
            else:
                continue
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import x` names a module
    return found


def test_package_has_no_import_circle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}
    assert graph["convlstm.cell"], "the import scan found nothing: the pattern is wrong"

    def cycle_from(start, node, trail):
        for nxt in graph[node]:
            if nxt == start:
                return trail + [nxt]
            if nxt not in trail:
                found = cycle_from(start, nxt, trail + [nxt])
                if found:
                    return found
        return None

    for name in graph:
        cycle = cycle_from(name, name, [name])
        assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_ref_imports_nothing_else_of_the_package():
    path = PACKAGE / "ops" / "lstm_gates" / "ref.py"
    assert _imports(path, "convlstm.ops.lstm_gates.ref") == set()


def test_plain_checkout_imports_every_cpu_backend(tmp_path):
    """A copy of the package directory alone (no pip install, no setup.py) finds its kernels' sources: under
    TRITON_INTERPRET=1 the CPU has torch, triton and cpu_twin."""
    shutil.copytree(PACKAGE, tmp_path / "convlstm", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    code = ("import convlstm; from convlstm.ops.lstm_gates.stamp import SOURCE_DIR; "
            "print(convlstm.__file__); print(sorted(p.name for p in SOURCE_DIR.iterdir())); "
            "print(convlstm.available_backends('cpu'))")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    location, sources, available = result.stdout.strip().splitlines()
    assert location == str(tmp_path / "convlstm" / "__init__.py")
    assert "lstm_gates.cu" in sources and "lstm_gates_cpu.cpp" in sources
    assert available == "['torch', 'triton', 'cpu_twin']"
