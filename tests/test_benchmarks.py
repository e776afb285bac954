"""benchmarks/: each script's --quick run on the CPU writes the records it promises, with finite positive numbers;
make_table renders the committed results exactly as benchmarks/README.md shows them; the target checks decide on
the numbers they are given; gpu_session.sh's dry run reports a failed step. No timing asserts: speed lives in the
benchmarks themselves.

The scripts run as subprocesses, as a user runs them: on one CPU thread (on a busy 2-core machine a second thread can
wait a whole scheduler slice) and without TRITON_INTERPRET (they never time Triton's interpreter).
"""
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import convlstm

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
HEADER_KEYS = {"kind", "device", "device_name", "cpu_threads", "torch", "git_commit", "date", "command", "quick"}


def _import(name):
    """A module of benchmarks/ from its file, without putting benchmarks/ on sys.path for the other tests."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_table = _import("make_table")  # imports nothing from benchmarks/


def env_without_interpreter(**extra):
    env = dict(os.environ, **extra)
    env.pop("TRITON_INTERPRET", None)
    return env


def quick_run(script, tmp_path, *args):
    """Run `script` --device cpu --quick on one thread; return its header and records after checking the header."""
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--device", "cpu", "--quick", "--threads", "1",
                           "--out", str(out), *args], env=env_without_interpreter(), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert HEADER_KEYS <= set(data["header"]) and data["header"]["quick"] and data["header"]["cpu_threads"] == 1
    assert "\n|---|" in proc.stdout  # the README table of what it measured
    return data["header"], data["results"]


def assert_positive(record, *keys):
    for key in keys:
        assert isinstance(record[key], (int, float)) and math.isfinite(record[key]) and record[key] > 0, (key, record)


def test_bench_gates_quick(tmp_path):
    head, results = quick_run("bench_gates.py", tmp_path, "--compile-backend", "aot_eager")  # inductor: ~30 s
    assert head["kind"] == "gates"
    assert_positive(head, "copy_gbps")
    # the reference and its torch.compile; Triton's interpreter and the cpu_twin are never timed on the CPU
    assert [(r["backend"], r["pass"]) for r in results] == [(b, p) for b in ("torch", "compile")
                                                            for p in ("fwd", "bwd", "fwd+bwd")]
    n = 2 * 8 * 16 * 16  # hidden-state elements of the quick shape
    for r in results:
        assert r["status"] == "ok" and (r["dtype"], r["layout"], r["shape"]) == ("fp32", "nchw", [2, 8, 16, 16])
        assert_positive(r, "ms", "gbps", "copy_fraction", "peak_mem_mb")
        assert r["ms_iqr"] >= 0 and 0 <= r["max_abs_err"] <= 1e-4
        # forward: gates 4n, c_prev n read, h, c 2n written; backward: 7n read, 5n written; fp32: 4 bytes
        assert r["bytes"] == {"fwd": 7, "bwd": 12, "fwd+bwd": 19}[r["pass"]] * n * 4
        assert r["gbps"] == pytest.approx(r["bytes"] / r["ms"] / 1e6)


def conv_macs(out_channels, in_channels, kernel, positions):
    return out_channels * in_channels * kernel * kernel * positions


def test_bench_train_quick(tmp_path):
    head, results = quick_run("bench_train.py", tmp_path)
    assert head["kind"] == "train" and head["config_name"] == "quick"
    # per model, the eager reference and "auto", which on the CPU runs it: same weights, same data, same first loss
    assert [(r["model"], r["backend"], r["amp"]) for r in results] == [
        (m, b, a) for m in ("tutorial", "openstl_convlstm") for a in ("bf16", "none") for b in ("torch", "auto")]
    for r in results:
        assert r["status"] == "ok" and r["backend_resolved"] == "torch" and not r["compile"], r
        assert_positive(r, "ms", "seq_per_s", "peak_mem_mb", "loss_first", "gflop_fwd_per_seq", "tflop_per_s")
        assert r["seq_per_s"] == pytest.approx(r["config"]["batch"] / r["ms"] * 1e3)
        assert r["tflop_per_s"] == pytest.approx(r["flop_per_step"] / r["ms"] / 1e9)
        # backward costs about twice the forward (less: no gradient for the input frames)
        assert 2 < r["flop_per_step"] / (r["gflop_fwd_per_seq"] * 1e9 * r["config"]["batch"]) < 3
    for reference, auto in (results[0:2], results[2:4], results[4:6], results[6:8]):
        assert auto["loss_first"] == pytest.approx(reference["loss_first"], rel=1e-6)
    # The forward's convolutions at 2 FLOPs per multiply-add, counted by hand. Tutorial (nf 8, 16x16, 4 in, 4 out):
    # encoder 1 (1 + 8 -> 32), three more cells (16 -> 32), 3x3, 4 steps each; the Conv3d head 8 -> 1 over 4 frames.
    tutorial = 4 * conv_macs(32, 9, 3, 256) + 12 * conv_macs(32, 16, 3, 256) + 4 * conv_macs(1, 8, 3, 256)
    # OpenSTL (2 layers of 8, 2x2 patches: 4 patch channels on an 8x8 grid, 3x3), 4 + 4 - 1 steps of conv_x and
    # conv_h per layer and the 1x1 conv_last.
    openstl = 7 * (conv_macs(32, 4 + 8 + 8 + 8, 3, 64) + conv_macs(4, 8, 1, 64))
    assert results[0]["gflop_fwd_per_seq"] == pytest.approx(2 * tutorial / 1e9, rel=1e-12)
    assert results[4]["gflop_fwd_per_seq"] == pytest.approx(2 * openstl / 1e9, rel=1e-12)


def test_bench_train_counts_openstls_published_flops_for_convlstm_s():
    """OpenSTL's table gives ConvLSTM-S 56.8 "GFLOPs" per Moving MNIST sequence, fvcore's count of multiply-adds:
    count_flops (on the meta device, at no cost) finds twice that in FLOPs."""
    code = ("import bench_train as b; c = b.OPENSTL_CONFIGS['tutorial']; print(c['n_hidden_dim'], c['num_layers'], "
            "b.count_flops('openstl_convlstm', c)['gflop_fwd_per_seq'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env_without_interpreter(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    hidden, layers, gflop = proc.stdout.split()
    assert (hidden, layers) == ("128", "4") and round(float(gflop) / 2, 1) == 56.8
    # 16 patch channels of a 16x16 grid, 5x5, 19 steps: the first layer's conv_x 16 -> 512, conv_h and three
    # layers' conv_x and conv_h 128 -> 512 (seven), conv_last 128 -> 16.
    macs = 19 * (conv_macs(512, 16, 5, 256) + 7 * conv_macs(512, 128, 5, 256) + conv_macs(16, 128, 1, 256))
    assert float(gflop) == pytest.approx(2 * macs / 1e9, rel=1e-9)


def test_bench_memory_quick(tmp_path):
    """The eager reference, then each fused backend that runs here (on the CPU the cpu_twin, which keeps what the
    cuda backend keeps): each keeps less than the reference, and peaks lower."""
    head, results = quick_run("bench_memory.py", tmp_path)
    fused = [b for b in convlstm.available_backends("cpu") if b not in ("torch", "triton")]
    assert head["kind"] == "memory" and fused
    assert [(r["backend"], r["amp"]) for r in results] == [(b, a) for a in ("none", "bf16") for b in ["torch"] + fused]
    for r in results:
        assert r["status"] == "ok"
        assert_positive(r, "saved_mb", "peak_mem_mb", "saved_x_reference", "peak_x_reference")
        assert (r["saved_x_reference"] == r["peak_x_reference"] == 1) if r["backend"] == "torch" else \
            (r["saved_x_reference"] < 1 and r["peak_x_reference"] < 1), r


def test_bench_dispatch_quick(tmp_path):
    """lstm_gates by the reference, then each fused backend on the CPU (the cpu_twin, never the interpreter) by its
    public op and its custom op; a ConvLSTMCell step by the reference and each fused backend, without and with
    bf16 autocast; forward and forward+backward."""
    head, results = quick_run("bench_dispatch.py", tmp_path)
    fused = [b for b in convlstm.available_backends("cpu") if b not in ("torch", "triton")]
    passes = ("fwd", "fwd+bwd")
    expected = [("lstm_gates", path, "none", p) for path in ["reference"] + [path for b in fused
                                                                            for path in (b, f"{b}:custom_op")]
                for p in passes]
    expected += [("cell", path, amp, p) for amp in ("none", "bf16") for path in ["reference"] + fused for p in passes]
    assert head["kind"] == "dispatch" and [(r["op"], r["path"], r["amp"], r["pass"]) for r in results] == expected
    for r in results:
        assert r["status"] == "ok" and r["us_iqr"] >= 0, r
        assert_positive(r, "us", "x_reference")


def test_bench_data_quick(tmp_path):
    """The training step, then the .npy and the videos through a DataLoader with 0 and 2 workers: finite positive
    rates, each loader's as a ratio to the step's, every window of a full batch delivered."""
    head, results = quick_run("bench_data.py", tmp_path)
    assert head["kind"] == "data" and head["config_name"] == "quick" and (head["batch"], head["length"]) == (12, 20)
    assert [(r["case"], r.get("num_workers")) for r in results] == [("train step", None)] + [
        (source, workers) for source in ("npy", "video") for workers in (0, 2)]
    assert all(r["status"] == "ok" for r in results), results
    step, loaders = results[0], results[1:]
    assert_positive(step, "ms", "seq_per_s")
    assert step["seq_per_s"] == pytest.approx(step["config"]["batch"] / step["ms"] * 1e3)
    for r in loaders:
        assert_positive(r, "seconds", "seq_per_s", "x_train_step")
        assert not r["pin_memory"] and r["epochs"] >= 3 and r["sequences"] == r["epochs"] * (r["windows"] // 12 * 12)
        assert r["x_train_step"] == pytest.approx(r["seq_per_s"] / step["seq_per_s"])
    assert [r["frame_shape"] for r in loaders] == [[1, 64, 64]] * 2 + [[3, 64, 64]] * 2


def test_bench_inference_quick(tmp_path):
    """OpenSTL's model's forecast, 4 frames in and 4 out, each way the CPU runs it: the eager reference, torch.compile
    (aot_eager here: Inductor's compile is tens of seconds), the torch.export program and the ONNX file in
    onnxruntime; every way's output matches the reference's before it is timed; sequences/s in OpenSTL's convention.
    One configuration (each ONNX export takes seconds): the tutorial's model runs in gpu_session.sh's dry run below and
    in the committed CPU results, and its export round trip in tests/test_export.py."""
    head, results = quick_run("bench_inference.py", tmp_path, "--compile-backend", "aot_eager", "--configs", "quick")
    ways = ("torch", "export", "onnxruntime", "compile")
    assert head["kind"] == "inference" and (head["reps"], head["warmup"]) == (3, 3) and head["not_run"] == {}
    assert [(r["config"], r["model"], r["backend"]) for r in results] == [("quick", "openstl_convlstm", way)
                                                                          for way in ways]
    for r in results:
        assert r["status"] == "ok" and r["batch"] == 2 and r["reps"] == 3, r
        assert_positive(r, "ms", "seq_per_s", "x_reference", "gflop_fwd_per_seq", "tflop_per_s", "setup_s")
        assert 0 <= r["max_abs_err"] <= 1e-4 and r["ms_iqr"] >= 0
        assert r["x_reference"] == pytest.approx(r["seq_per_s"] / results[0]["seq_per_s"])
        assert r["tflop_per_s"] == pytest.approx(r["gflop_fwd_per_seq"] * r["seq_per_s"] / 1e3)
    # By hand, 7 steps of OpenSTL's 2 layers of 8 (2x2 patches: 4 channels on an 8x8 grid, 3x3) and its 1x1
    # conv_last.
    openstl = 7 * (conv_macs(32, 4 + 8 + 8 + 8, 3, 64) + conv_macs(4, 8, 1, 64))
    assert results[0]["gflop_fwd_per_seq"] == pytest.approx(2 * openstl / 1e9, rel=1e-12)


def test_make_table_renders_the_committed_results():
    """benchmarks/README.md's generated part is what make_table makes of benchmarks/results/ (run
    `python benchmarks/make_table.py --write` after adding a results file)."""
    runs = make_table.load(sorted((BENCH / "results").glob("*.json")))
    assert {run["header"]["kind"] for run in runs} == {"gates", "train", "dispatch", "memory", "data", "profile",
                                                            "inference"}
    readme = (BENCH / "README.md").read_text()
    assert readme.split(make_table.BEGIN + "\n", 1)[1].split(make_table.END, 1)[0] == make_table.render(runs)


def run_of(kind, results, device="cuda", **header):
    return dict(header=dict(kind=kind, device=device, quick=False, **header), results=results, path=f"{kind}.json")


def gate(backend, dtype, ms, copy_fraction, shape=(256, 64, 64, 64)):
    return dict(backend=backend, dtype=dtype, layout="nchw", shape=list(shape), status="ok", ms=ms,
                copy_fraction=copy_fraction, **{"pass": "fwd+bwd"})


def train(backend, seq_per_s, peak_mem_mb, compile_on=False, amp="bf16"):
    return dict(backend=backend, backend_resolved=backend, amp=amp, compile=compile_on, channels_last=False,
                status="ok", seq_per_s=seq_per_s, peak_mem_mb=peak_mem_mb)


def test_gate_targets_judge_the_worst_case_of_the_largest_shape():
    gates = [gate("torch", "bf16", 4.0, 0.22), gate("compile", "bf16", 1.3, 0.69), gate("triton", "bf16", 1.05, 0.86),
             gate("cuda", "bf16", 1.0, 0.90),  # the fastest fused backend is the one judged
             gate("torch", "fp32", 8.0, 0.2), gate("compile", "fp32", 2.2, 0.7), gate("cuda", "fp32", 1.9, 0.81),
             gate("cuda", "fp32", 0.5, 0.10, shape=(12, 64, 64, 64))]  # a smaller shape is not judged
    copy, eager, compiled, *_ = make_table.targets([run_of("gates", gates)]).splitlines()
    assert copy.startswith("- **not met**: gate fwd+bwd >= 85% of copy") and "worst 81% (fp32 nchw cuda" in copy
    assert eager.startswith("- **met**: gate fwd+bwd >= 3x eager") and "worst 4.00x (bf16 nchw cuda" in eager
    assert compiled.startswith("- **not met**: gate fwd+bwd >= 1.2x torch.compile") and "worst 1.16x" in compiled
    quick = run_of("gates", gates)
    quick["header"]["quick"] = True  # a smoke run's numbers are not judged
    assert make_table.targets([quick, run_of("gates", gates, device="cpu")]).count("**not measured**") == 5


def test_train_target_needs_speed_and_memory_in_one_case():
    results = [train("torch", 10.0, 1000.0), train("torch", 30.0, 100.0, amp="none"),  # another amp: not judged
               train("cuda", 14.0, 500.0), train("cuda", 17.0, 650.0, compile_on=True)]
    line = make_table.targets([run_of("train", results, config_name="tutorial")]).splitlines()[-2]
    assert line.startswith("- **met**: train step") and "cuda (cuda) compile=True" in line
    assert "1.70x seq/s, 65% memory" in line  # 1.4x (the other) is too slow
    results[-1]["peak_mem_mb"] = 800.0
    line = make_table.targets([run_of("train", results, config_name="tutorial")]).splitlines()[-2]
    assert line.startswith("- **not met**: train step") and "fastest: cuda (cuda) compile=True" in line
    line = make_table.targets([run_of("train", results, config_name="cpu")]).splitlines()[-2]
    assert line.startswith("- **not measured**: train step")
    # two runs of the same cases: each run's best is reported, and a verdict that differs between them says so
    passing = [train("torch", 10.0, 1000.0), train("triton", 16.0, 600.0)]
    line = make_table.targets([run_of("train", results, config_name="tutorial"),
                               run_of("train", passing, config_name="tutorial")]).splitlines()[-2]
    assert line.startswith("- **met in 1 of 2 runs**: train step") and "fastest: cuda (cuda) compile=True" in line
    assert "best passing: triton (triton) compile=False channels_last=False: 1.60x seq/s, 60% memory" in line


def test_inference_target_is_openstls_convlstm_s_figure():
    """OpenSTL's 113 sequences/s (V100) for ConvLSTM-S, judged on the fastest way of a full GPU run."""
    def record(backend, seq_per_s, config="convlstm_s"):
        return dict(config=config, backend=backend, status="ok", seq_per_s=seq_per_s, batch=100)
    slow = [record("torch", 90.0), record("cuda", 112.0), record("triton", 500.0, config="quickstart")]
    line = make_table.targets([run_of("inference", slow)]).splitlines()[-1]
    assert line.startswith("- **not met**: ConvLSTM-S inference >= 113 seq/s") and "fastest: cuda 112" in line
    assert "eager: torch 90 seq/s" in line
    line = make_table.targets([run_of("inference", slow + [record("triton", 1800.0)])]).splitlines()[-1]
    assert line.startswith("- **met**: ConvLSTM-S") and "fastest: triton 1800 seq/s at batch 100" in line
    assert make_table.targets([run_of("inference", slow, device="cpu")]).splitlines()[-1].startswith(
        "- **not measured**: ConvLSTM-S")


SESSION = BENCH / "gpu_session.sh"
PARTS = ["build", "tests", "gates", "train", "openstl", "profile", "inference"]


def session_boxes():
    """The time box of each part, read from the script's defaults (GPU_SESSION_BOX_<PART>:=seconds)."""
    return {name.lower(): int(seconds) for name, seconds in
            re.findall(r"GPU_SESSION_BOX_([A-Z]+):=(\d+)", SESSION.read_text())}


def test_gpu_session_fits_the_device_time():
    """One call of about 6.5 minutes in the session's 15 device minutes: every part has a box, build and boxes
    together at most 390 s, and the call timeout gpu_prepare.sh prints covers them with each box's kill grace."""
    boxes = session_boxes()
    assert list(boxes) == PARTS and sum(boxes.values()) <= 390, boxes
    prepare = (BENCH / "gpu_prepare.sh").read_text()
    assert "timeout=$((boxes + 10 * parts + 30))" in prepare and "--kill-after=10" in SESSION.read_text()


def run_session(tmp_path, **env):
    """gpu_session.sh's dry run on the CPU (quick benchmarks, one thread, the eager backend) into tmp_path/out."""
    if shutil.which("timeout") is None:
        pytest.skip("gpu_session.sh needs coreutils' timeout")
    out = tmp_path / "out"
    env = env_without_interpreter(OUT=str(out), PYTHON=sys.executable, GPU_SESSION_DEVICE="cpu", GPU_SESSION_QUICK="1",
                                  GPU_SESSION_BENCH_ARGS="--threads 1 --backends torch", **env)
    proc = subprocess.run(["bash", str(SESSION)], env=env, capture_output=True, text=True, timeout=400)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    return proc, out, summary


def test_gpu_session_dry_run_of_every_part(tmp_path):
    """Every part on the CPU: each PASSes, the gpu tests are collected (and skip here), every benchmark writes
    its records, the summary ends ALL PARTS PASSED, and $OUT holds the 7 files the device brings back (it takes 8)."""
    proc, out, summary = run_session(tmp_path)
    assert proc.returncode == 0, summary + proc.stderr
    for part in PARTS:
        assert re.search(rf"^{part} +PASS +exit +0 in +\d+s \(box {session_boxes()[part]}s\)$", summary, re.M), summary
    assert re.search(r"\d+ skipped, \d+ deselected", summary) and summary.rstrip().endswith("ALL PARTS PASSED")
    assert "**not measured**: gate fwd+bwd" in summary and re.search(r"^profile torch: step [\d.]+ ms", summary, re.M)
    assert sorted(os.listdir(out)) == ["gates_cpu.json", "inference_cpu.json", "openstl_cpu.json", "profile_cpu.json",
                                       "session.log", "summary.txt", "train_cpu.json"]
    runs = {name: json.loads((out / f"{name}_cpu.json").read_text()) for name in ("gates", "train", "openstl",
                                                                                  "profile", "inference")}
    assert {(r["dtype"], r["layout"]) for r in runs["gates"]["results"]} == {
        (d, layout) for d in ("fp32", "bf16") for layout in ("nchw", "channels_last")}
    assert {r["model"] for r in runs["train"]["results"]} == {"tutorial"}
    assert {(r["model"], r["amp"]) for r in runs["openstl"]["results"]} == {
        ("openstl_convlstm", amp) for amp in ("none", "bf16")}
    # both models' forecast in OpenSTL's convention (the dry run: the eager way alone)
    assert [(r["model"], r["backend"]) for r in runs["inference"]["results"]] == [("openstl_convlstm", "torch"),
                                                                                  ("tutorial", "torch")]
    # the tutorial's nf 4 at 16x16, by hand: 4 steps of its first encoder cell (1 + 4 -> 16), 12 of the other three
    # (8 -> 16) and its head (4 -> 1) over 4 frames
    tutorial = 4 * conv_macs(16, 5, 3, 256) + 12 * conv_macs(16, 8, 3, 256) + 4 * conv_macs(1, 4, 3, 256)
    assert runs["inference"]["results"][1]["gflop_fwd_per_seq"] == pytest.approx(2 * tutorial / 1e9, rel=1e-12)
    profile, = runs["profile"]["results"]
    assert profile["status"] == "ok" and profile["top"] and profile["kernel_ms"] > 0
    assert profile["top"][0]["category"] == "convolution"  # the tutorial's step is its convolutions
    assert all(r["status"] == "ok" for run in runs.values() for r in run["results"])


def test_gpu_session_reports_a_failed_part_and_runs_the_rest(tmp_path):
    """A test that fails: tests FAIL (named in the summary with the failing test), the parts asked for after it
    still run, exit 1; GPU_SESSION_PARTS runs only the parts it names."""
    (tmp_path / "test_fails.py").write_text("def test_fails():\n    assert 1 == 2\n")
    proc, out, summary = run_session(tmp_path, GPU_SESSION_PARTS="tests,train",
                                     GPU_SESSION_TESTS=f"{tmp_path / 'test_fails.py'} --rootdir {tmp_path}")
    assert proc.returncode == 1, summary
    assert re.search(r"^tests +FAIL +exit +1 ", summary, re.M) and re.search(r"^train +PASS ", summary, re.M)
    assert "FAILED " in summary and "test_fails" in summary and "1 failed" in summary
    assert not re.search(r"^(build|gates|openstl|profile) ", summary, re.M)
    assert summary.rstrip().endswith("FAILED: tests")
    assert sorted(os.listdir(out)) == ["session.log", "summary.txt", "train_cpu.json"]


def test_gpu_session_time_box_ends_incomplete_not_failed(tmp_path):
    """A benchmark stopped by its box is INCOMPLETE (exit 3), not a failure; its JSON keeps the cases it ran."""
    proc, out, summary = run_session(tmp_path, GPU_SESSION_PARTS="openstl", GPU_SESSION_BOX_OPENSTL="1")
    assert proc.returncode == 3, summary
    assert re.search(r"^openstl +INCOMPLETE +exit +(124|130|137) ", summary, re.M), summary
    assert "INCOMPLETE: openstl" in summary and not list(out.glob("*.tmp"))


def test_gpu_session_refuses_an_unknown_part(tmp_path):
    proc, out, summary = run_session(tmp_path, GPU_SESSION_PARTS="build,bench")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "GPU_SESSION_PARTS: unknown part 'bench' (parts: build tests gates train openstl profile inference)")


def test_the_gpu_marker_selects_every_gpu_case():
    """`pytest -m gpu`, what the tests part runs, holds what the GPU must show: forward, backward and gradcheck
    of both fused backends, torch.compile of the Triton op, a one-process NCCL DDP step with the op, the > 2^31
    element case, the extension's build; and no test of CPU tensors."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
                           "no:cacheprovider"], cwd=BENCH.parent, capture_output=True, text=True, timeout=120)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0 and ids, proc.stdout + proc.stderr

    def selected(test, backend):
        return any(f"::{test}[" in i and f"cuda-{backend}" in i for i in ids)
    for backend in ("cuda", "triton"):
        for test in ("test_lstm_gates_matches_reference", "test_lstm_gates_gradcheck_full",
                     "test_cell_gradcheck_float64", "test_encoder_decoder_sequence_matches_torch",
                     "test_lstm_gates_int64_offsets", "test_ddp_step_over_nccl", "test_cell_torch_compile_fullgraph"):
            assert selected(test, backend), (test, backend)
    assert any("test_cuda_extension_loads_prebuilt_or_jit" in i for i in ids)
    assert not [i for i in ids if "[cpu-" in i or "-cpu]" in i or "[cpu]" in i]
