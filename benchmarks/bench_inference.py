"""bench_inference: a model's forecast, in OpenSTL's inference convention, per way of running it.

    python benchmarks/bench_inference.py --device cpu --out benchmarks/results/inference_cpu.json
    python benchmarks/bench_inference.py --device cuda --out benchmarks/results/inference_cuda.json
    convlstm bench inference --device cpu --configs quickstart

What runs is convlstm.model.forecast, 10 frames in and 10 out (--quick: 4 and 4): what evaluate.py and predict.py call and what
`convlstm export` writes. Ways (--backends): torch (eager, the reference gate math), each fused lstm_gates backend
that runs on the device (none on the CPU, where Triton is its interpreter and cpu_twin a debugging twin), compile
(torch.compile of the whole forecast with the reference gates: what Inductor makes of the eager model), export (the
torch.export program convlstm.export writes, run by torch) and onnxruntime (the ONNX file convlstm.export writes, in
an InferenceSession: the CUDA provider with inputs and outputs bound to GPU memory, or the CPU provider on torch's
thread count). A way's output must match the eager reference's before it is timed (max_abs_err).

OpenSTL's convention (openstl/utils/main_utils.py measure_throughput, the "FPS" of its tables): sequences/s =
repetitions x batch / the calls' summed time, batch 100 (10 when a side is >= 128 px), 100 repetitions, float32,
torch.no_grad, each call timed by CUDA events (the onnxruntime calls, which run on the provider's own stream, by
the wall clock around a synchronous run); here after WARMUP calls. On the CPU (ConvLSTM-S's forward is 113.6 GFLOP
a sequence: batch 100 would take minutes a call) the 64x64 configurations run at batch 2, and every configuration
10 repetitions timed by the wall clock. Configurations (--configs), random weights and frames, seeded: quickstart
(the README Quickstart's model: OpenSTL's ConvLSTM, 2 x 32, kernel 5, patch 4, 32x32 grey), convlstm_s (OpenSTL's
ConvLSTM-S preset, its published row: 4 x 128, kernel 5, patch 4, 64x64 grey) and tutorial (the tutorial's
encoder-decoder, nf 64, 64x64 grey). On a GPU the default leaves the tutorial's out (a minute of repetitions).
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import benchutil
import convlstm
from convlstm.config import with_defaults
from convlstm.export import Forecast, export_model, exported_program
from convlstm.load import ModelInfo
from convlstm.model import model_from_config, preset_config
from convlstm.ops.lstm_gates.backends import FUSED

CONFIGS = {  # train.py config keys (model_from_config): frames in (n_steps_past) and out, the frame side
    "quickstart": dict(model="openstl_convlstm", n_hidden_dim=32, num_layers=2, kernel_size=5, patch_size=4,
                       image_size=32, n_steps_past=10, n_steps_ahead=10),
    "convlstm_s": {key: preset_config("convlstm_s")[key] for key in ("model", "n_hidden_dim", "num_layers",
                   "kernel_size", "patch_size", "image_size", "n_steps_past", "n_steps_ahead")},
    "tutorial": dict(model="tutorial", n_hidden_dim=64, kernel_size=3, image_size=64, n_steps_past=10,
                     n_steps_ahead=10),
    # --quick: 4 frames in and 4 out (ONNX's export of the unrolled recurrence takes seconds a step)
    "quick": dict(model="openstl_convlstm", n_hidden_dim=8, num_layers=2, kernel_size=3, patch_size=2, image_size=16,
                  n_steps_past=4, n_steps_ahead=4),
    "quick_tutorial": dict(model="tutorial", n_hidden_dim=4, kernel_size=3, image_size=16, n_steps_past=4,
                           n_steps_ahead=4),
}
DEFAULT_CONFIGS = {"cpu": ("quickstart", "convlstm_s", "tutorial"), "cuda": ("convlstm_s", "quickstart"),
                   "quick": ("quick", "quick_tutorial")}
CPU_BATCH = 2  # 64x64 frames on the CPU (ConvLSTM-S: 0.7 s a call of 2 on 2 cores)
REPS = {"cuda": 100, "cpu": 10, "quick": 3}
WARMUP = 3  # compiles, autotunes, fills onnxruntime's and cuDNN's caches
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-2}  # max |output - eager's|; CUDA's float32 convolutions may run in TF32
WAYS = ("torch", *FUSED, "export", "onnxruntime", "compile")


def positive(text):
    """argparse type: an int of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of at least 1")
    return int(text)


def openstl_batch(side):
    """OpenSTL's measure_throughput: 100 sequences a call, 10 when a frame side is 128 px or more."""
    return 10 if side >= 128 else 100


def onnx_problem(device):
    """Why the onnxruntime way cannot run on `device` here, or None."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:  # torch.onnx's exporter needs onnx and onnxscript
        return f"{', '.join(missing)} not installed (pip install 'convlstm[dev]')"
    import onnxruntime
    if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return (f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (providers: "
                f"{', '.join(onnxruntime.get_available_providers())}; pip install onnxruntime-gpu)")
    return None


def available(device):
    """torch.compile last: the longest setup, the first a time box should cut."""
    ways = ["torch", *benchutil.fused_backends(device), "export"]
    return ways + ([] if onnx_problem(device) else ["onnxruntime"]) + ["compile"]


def build(config, device, backend="torch"):
    """The model of `config` (seeded weights) on `device`, with the model.info convlstm.export reads."""
    torch.manual_seed(0)
    full = with_defaults(dict(config, in_chan=1))
    model = model_from_config(full, backend=backend).to(device).eval()
    side = config["image_size"]
    model.info = ModelInfo(kind="train.py", n_in=config["n_steps_past"], n_out=config["n_steps_ahead"], in_chan=1,
                           out_chan=1, frame_size=(side, side), config=full, model=config["model"])
    return model


def count_gflop(config):
    """One sequence's forecast in GFLOP, convolutions at 2 FLOPs per multiply-add (bench_train's count_flops; OpenSTL
    counts one), by FlopCounterMode on the meta device (shapes only)."""
    model = build(config, torch.device("meta"))
    side = config["image_size"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        Forecast(model, model.info.n_out)(torch.rand(1, model.info.n_in, 1, side, side, device="meta"))
    return counter.get_total_flops() / 1e9


def onnx_runner(model, x, device, folder):
    """A call running the ONNX export of `model` on x in onnxruntime, returning its output as a tensor on `device`.
    Exported from a CPU copy (ONNX has no device); on CUDA the input and output are bound to GPU memory, so the call
    times what the provider computes, not copies."""
    import onnxruntime
    path = os.path.join(folder, "model.onnx")
    export_model(copy.deepcopy(model).cpu(), path, "onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if device.type == "cpu":
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    session = onnxruntime.InferenceSession(path, options, providers=[("CUDAExecutionProvider",
                                                                      {"device_id": device.index or 0})])
    y = torch.empty(x.shape[0], model.info.n_out, *x.shape[2:], device=device)
    binding = session.io_binding()
    binding.bind_input("x", "cuda", device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output("y", "cuda", device.index or 0, np.float32, tuple(y.shape), y.data_ptr())

    def call():
        session.run_with_iobinding(binding)
        return y
    return call


def runner(way, model, x, device, folder, compile_backend):
    """A call computing the forecast of x the given way; what making it took (export, first compile) is the
    setup."""
    if way == "onnxruntime":
        return onnx_runner(model, x, device, folder)
    if way == "export":
        module = exported_program(model).module()
        return lambda: module(x)
    forecast = Forecast(model, model.info.n_out)
    if way == "compile":
        forecast = torch.compile(forecast, backend=compile_backend)
    return lambda: forecast(x)


def time_calls(call, device, reps, events):
    """Each call's time in ms after WARMUP calls: CUDA events around it (events=True), else the wall clock up to
    the device's synchronize."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(reps):
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def measure(name, way, batch, reps, device, args, reference, gflop):
    """One case: build, make the way's call, check its output against the eager reference's, time it."""
    torch._dynamo.reset()  # each compile case compiles afresh
    config = CONFIGS[name]
    model = build(config, device, backend=way if way in convlstm.ops.lstm_gates.BACKENDS else "torch")
    side = config["image_size"]
    x = torch.rand(batch, model.info.n_in, 1, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        if name not in reference:
            reference[name] = Forecast(build(config, device), model.info.n_out)(x)
        begin = time.perf_counter()
        call = runner(way, model, x, device, folder, args.compile_backend)
        error = (call().float() - reference[name]).abs().max().item()
        setup_s = time.perf_counter() - begin
        if not error <= TOLERANCE[device.type]:
            raise AssertionError(f"output differs from the eager reference's by {error:.3g} (tolerance "
                                 f"{TOLERANCE[device.type]:g})")
        times = time_calls(call, device, reps, events=device.type == "cuda" and way != "onnxruntime")
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    seq_per_s = reps * batch / sum(times) * 1e3
    if way == "torch":
        reference[name, "seq_per_s"] = seq_per_s
    if name not in gflop:
        gflop[name] = count_gflop(config)
    eager = reference.get((name, "seq_per_s"))
    return [dict(batch=batch, reps=reps, ms=float(median), ms_iqr=float(q3 - q1), seq_per_s=seq_per_s,
                 **({"x_reference": seq_per_s / eager} if eager else {}), gflop_fwd_per_seq=gflop[name],
                 tflop_per_s=gflop[name] * seq_per_s / 1e3, setup_s=setup_s, max_abs_err=error)]


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--configs", type=benchutil.comma_list(tuple(CONFIGS)),
                        help="comma-separated (default: quickstart,convlstm_s,tutorial on cpu; convlstm_s,quickstart "
                             "on cuda; quick,quick_tutorial with --quick)")
    parser.add_argument("--backends", type=benchutil.comma_list(WAYS),
                        help="ways to run, comma-separated (default: torch, every fused backend that runs here, "
                             "export, onnxruntime, compile)")
    parser.add_argument("--batch", type=positive, help="sequences a call (default: OpenSTL's rule; 2 for 64x64 on cpu)")
    parser.add_argument("--reps", type=positive, help="timed calls (default: 100 on cuda, 10 on cpu, 3 with --quick)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend")
    args, device = benchutil.parse(parser, argv, available)
    names = args.configs or DEFAULT_CONFIGS["quick" if args.quick else device.type]
    reps = args.reps or REPS["quick" if args.quick else device.type]
    problem = onnx_problem(device)
    head = benchutil.header("inference", device, args, reps=reps, warmup=WARMUP,
                            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,  # torch's default, as OpenSTL runs
                            configs={name: CONFIGS[name] for name in names},
                            not_run={"onnxruntime": problem} if problem else {})
    if problem:
        print(f"onnxruntime: not run: {problem}")

    def batch(name):
        side = CONFIGS[name]["image_size"]
        return args.batch or (CPU_BATCH if device.type == "cpu" and side >= 64 else
                              2 if args.quick else openstl_batch(side))
    reference, gflop = {}, {}
    cases = [([dict(config=name, model=CONFIGS[name]["model"], backend=way)],
              functools.partial(measure, name, way, batch(name), reps, device, args, reference, gflop))
             for name in names for way in args.backends]  # the reference first: the others compare with it
    # setup_s is a first compile's true cost: Inductor and Triton compile into caches of this run, not the user's
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"] = cache, os.path.join(cache, "triton")
        return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
