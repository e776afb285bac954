"""bench_data: sequences/s the DataLoader delivers from an .npy array and from video files, beside the training step's.

    python benchmarks/bench_data.py --device cpu --threads 1 --out benchmarks/results/data_cpu.json
    python benchmarks/bench_data.py --device cuda --quick

Reading must not be what a step waits on. In a temporary folder it writes the tutorial's data shape as uint8 (N, 20,
1, 64, 64) in one .npy, and a folder of 64x64 RGB H.264 mp4 videos (PyAV); then reads each through train.py's path
(open_source, Windows of 20 frames at its default stride, a shuffled DataLoader of batch 12 with drop_last,
persistent workers, pinned memory only on cuda, each batch moved to the device) with 0 and 2 worker processes. The
.npy is memory-mapped and, freshly written, read from the page cache; videos are decoded in the workers, whole, a few
kept per worker. Beside them, one training step of the tutorial's model (bench_train's step, eager torch, fp32) on
the same machine as sequences/s; x_train_step = loader rate / step rate, above 1 where reading keeps up.
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import bench_train
import benchutil
from convlstm.data.sources import open_source
from convlstm.data.windows import Windows

LENGTH, BATCH = 20, 12  # the tutorial's 10 in + 10 out, and its batch
WORKERS = (0, 2)


def write_npy(path, count, rng):
    """`count` uint8 sequences (count, 20, 1, 64, 64): the tutorial's Moving MNIST shape, in train.py's layout."""
    np.save(path, rng.integers(0, 256, size=(count, LENGTH, 1, 64, 64), dtype=np.uint8))
    return dict(shape=[count, LENGTH, 1, 64, 64], dtype="uint8", mb=os.path.getsize(path) / 2**20)


def write_videos(folder, count, frames, rng):
    """`count` mp4 files of `frames` 64x64 RGB frames each (libx264, yuv420p, 25 fps): a bright square moving over a
    noisy gradient, so the encoder has motion and texture to code, as in a real clip."""
    import av

    os.makedirs(folder)
    ys, xs = np.mgrid[0:64, 0:64]
    for v in range(count):
        with av.open(os.path.join(folder, f"clip_{v}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for t in range(frames):
                y0, x0 = (np.array([3, 5]) * t + 7 * v) % 48
                frame = (xs * 2 + ys + 40 * v)[..., None] % 128 + rng.integers(0, 24, (64, 64, 3))  # (H, W, 3)
                frame[y0:y0 + 16, x0:x0 + 16] = (255, 200, 60)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")))
            container.mux(stream.encode())
    paths = [os.path.join(folder, name) for name in os.listdir(folder)]
    return dict(count=count, frames_each=frames, size="64x64", codec="libx264",
                mb=sum(map(os.path.getsize, paths)) / 2**20)


def measure_step(config, device, args, rate):
    """The tutorial's training step (bench_train.build/make_step: forward, backward, Adam) in sequences/s."""
    model, optimizer, x, target = bench_train.build("torch", config, device)
    step, losses = bench_train.make_step(model, optimizer, x, target, "none", device)
    # The timer's first call (its block-size estimate) is the warm-up that creates Adam's state; at the tutorial's
    # size on the CPU (30-50 s a step on 1 thread) its 3x-seconds cap then stops after one or two timed steps.
    ms, iqr = benchutil.time_ms(step, device, 0.01 if args.quick else 10)
    if not torch.isfinite(torch.stack(losses)).all():
        raise FloatingPointError("non-finite loss in the training step")
    rate["train"] = config["batch"] / ms * 1e3
    return [dict(ms=ms, ms_iqr=iqr, seq_per_s=rate["train"])]


def measure_loader(path, num_workers, device, args, rate):
    windows = Windows(open_source(path), LENGTH)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(windows, batch_size=BATCH, shuffle=True, generator=generator, drop_last=True,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    if len(loader) == 0:
        raise ValueError(f"{len(windows)} windows are fewer than one batch of {BATCH}")

    def epoch():
        delivered = 0
        for batch in loader:  # (B, T, C, H, W) float32
            batch.to(device, non_blocking=True)
            delivered += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return delivered

    epoch()  # warm-up: starts the persistent workers, maps the array, fills the decoded-video caches
    # A wall clock over whole epochs, not benchutil.time_ms: what is measured is an iterator's throughput with workers
    # reading ahead, whose batches are not independent calls a timer could repeat in blocks; the first batch of each
    # epoch waits on the workers' start-up, as in training.
    delivered, epochs, start = 0, 0, time.perf_counter()
    while epochs < 3 or time.perf_counter() - start < (0.05 if args.quick else 5):
        delivered += epoch()
        epochs += 1
    seconds = time.perf_counter() - start
    record = dict(windows=len(windows), frame_shape=list(windows.frame_shape), epochs=epochs, sequences=delivered,
                  seconds=seconds, seq_per_s=delivered / seconds)
    if "train" in rate:
        record["x_train_step"] = record["seq_per_s"] / rate["train"]
    return [record]


def main(argv=None):
    parser = benchutil.parser(__doc__)
    parser.add_argument("--config", choices=tuple(bench_train.CONFIGS),
                        help="the training step's model and batch (default: tutorial; --quick: quick)")
    parser.add_argument("--sequences", type=int, help="sequences in the .npy (default 2000; --quick 48)")
    parser.add_argument("--videos", type=int, help="video files (default 24; --quick 3)")
    parser.add_argument("--video-frames", type=int, default=80, help="frames per video (default 80)")
    args, device = benchutil.parse(parser, argv)
    config_name = args.config or ("quick" if args.quick else "tutorial")
    config = bench_train.CONFIGS[config_name]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        npy, videos = os.path.join(tmp, "sequences.npy"), os.path.join(tmp, "videos")
        written = dict(npy=write_npy(npy, args.sequences or (48 if args.quick else 2000), rng),
                       videos=write_videos(videos, args.videos or (3 if args.quick else 24), args.video_frames, rng))
        head = benchutil.header("data", device, args, config_name=config_name, batch=BATCH, length=LENGTH, **written)
        print(f"{head['device_name']}: loaders over {written}; training step config {config_name} {config}")
        rate = {}  # sequences/s of the training step, measured first: every loader's ratio is to it
        cases = [([dict(case="train step", backend="torch", amp="none", config=config)],
                  functools.partial(measure_step, config, device, args, rate))]
        cases += [([dict(case=name, num_workers=workers, pin_memory=device.type == "cuda")],
                    functools.partial(measure_loader, path, workers, device, args, rate))
                  for name, path in (("npy", npy), ("video", videos)) for workers in WORKERS]
        return benchutil.run_cases(cases, args, head)


if __name__ == "__main__":
    sys.exit(main())
