"""Users' own data: arrays, frame folders and videos through convlstm.data.sources and windows; each bad input is
one clear error naming the file and the value."""
import os

import numpy as np
import pytest
import torch

from convlstm.data.sources import DataError, open_source
from convlstm.data.windows import Windows, parse_size, split_sequences

av = pytest.importorskip("av", reason="PyAV is the optional video extra (pip install -e '.[video]')")


def write_video(path, frames, fps=10):
    """frames uint8 (T, H, W, 3) -> a video file (H.264 in .mp4, MPEG-4 part 2 in .avi)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if str(path).endswith(".mp4") else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_frames(folder, frames):
    """frames uint8 (T, H, W) or (T, H, W, 3) -> folder/0.png ... (T-1).png."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{t}.png"))


def sequences(shape, seed=0):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.mark.parametrize("layout, shape", [("NTCHW", (3, 12, 2, 5, 7)), ("NTHW", (3, 12, 5, 7)),
                                           ("TNHW", (12, 3, 5, 7)), ("NTHWC", (3, 12, 5, 7, 2))])
@pytest.mark.parametrize("kind", ["npy", "npz", "npz_compressed"])
def test_array_layouts_read_the_same_frames(tmp_path, layout, shape, kind):
    array = sequences(shape)
    path = tmp_path / f"data.{kind[:3]}"
    {"npy": np.save, "npz": np.savez, "npz_compressed": np.savez_compressed}[kind](path, array)
    source = open_source(path, layout=layout)
    windows = Windows(source, length=5, stride=3)  # starts 0, 3, 6 in sequences of 12: 3 per sequence
    assert len(windows) == 9
    as_ntchw = {"NTCHW": lambda a: a, "NTHW": lambda a: a[:, :, None],
                "TNHW": lambda a: a.transpose(1, 0, 2, 3)[:, :, None], "NTHWC": lambda a: a.transpose(0, 1, 4, 2, 3)}
    nt = as_ntchw[layout](array)
    torch.testing.assert_close(windows[4], torch.from_numpy(nt[1, 3:8] / np.float32(255)))
    if kind != "npz_compressed":
        assert isinstance(source._array(), np.memmap)


def test_array_layout_detection(tmp_path):
    np.save(tmp_path / "standard.npy", sequences((20, 3, 64, 64)))
    np.save(tmp_path / "time_first.npy", sequences((30, 10, 8, 8)))
    np.save(tmp_path / "time_second.npy", sequences((10, 30, 8, 8)))
    np.save(tmp_path / "five.npy", sequences((2, 4, 1, 8, 8)))
    assert open_source(tmp_path / "standard.npy").layout == "TNHW"  # mnist_test_seq.npy's shape
    assert open_source(tmp_path / "time_first.npy", min_length=20).layout == "TNHW"  # only axis 0 holds 20 frames
    assert open_source(tmp_path / "time_second.npy", min_length=20).layout == "NTHW"
    assert open_source(tmp_path / "five.npy").layout == "NTCHW"
    with pytest.raises(DataError, match=r"ambiguous.*pass --layout NTHW or --layout TNHW"):
        open_source(tmp_path / "time_first.npy", min_length=8)


def test_float_arrays_hold_0_to_1(tmp_path):
    good = np.random.default_rng(0).random((2, 6, 4, 4)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "bad.npy", good * 255)
    torch.testing.assert_close(Windows(open_source(tmp_path / "good.npy", "NTHW"), 6)[1][:, 0],
                               torch.from_numpy(good[1]))
    with pytest.raises(DataError, match=r"bad.npy: sequence 0 has float values in \[.*, 25.*\]"):
        Windows(open_source(tmp_path / "bad.npy", "NTHW"), 6)[0]


def test_frame_folders_in_name_order_grey_and_rgb(tmp_path):
    frames = sequences((12, 6, 9))
    write_frames(tmp_path / "grey" / "seq_a", frames)
    source = open_source(tmp_path / "grey")
    assert source.frame_shape == (1, 6, 9) and source.lengths == [12]
    window = Windows(source, 12)[0]  # 0.png, 1.png, ..., 10.png, 11.png: numbers in name order
    torch.testing.assert_close(window[:, 0], torch.from_numpy(frames / np.float32(255)))
    write_frames(tmp_path / "rgb" / "s", sequences((4, 6, 9, 3)))
    assert open_source(tmp_path / "rgb").frame_shape == (3, 6, 9)


def test_videos_windows_with_a_stride(tmp_path):
    frames = sequences((14, 16, 24, 3))
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", frames)
    write_video(tmp_path / "videos" / "b.avi", frames[:9])
    source = open_source(tmp_path / "videos")
    assert source.lengths == [14, 9] and source.frame_shape == (3, 16, 24)
    windows = Windows(source, length=8, stride=2)  # a: 0, 2, 4, 6; b: 0
    assert len(windows) == 5 and windows[3].shape == (8, 3, 16, 24)
    assert 0 <= windows[3].min() and windows[3].max() <= 1
    grey = open_source(tmp_path / "videos" / "a.mp4", channels=1)
    assert Windows(grey, 8)[0].shape == (8, 1, 16, 24)


def test_resize_and_sizes():
    assert parse_size("64") == (64, 64) and parse_size("48x64") == (48, 64) and parse_size(None) is None
    with pytest.raises(DataError, match="--resize '64x'"):
        parse_size("64x")


def test_sequences_of_several_sizes_need_resize(tmp_path):
    write_frames(tmp_path / "f" / "small", sequences((4, 6, 8)))
    write_frames(tmp_path / "f" / "large", sequences((4, 12, 16)))
    source = open_source(tmp_path / "f")
    with pytest.raises(DataError, match=r"frames of 6x8 in small and 12x16 in large \(H x W\): sequences of several "
                                        r"sizes need --resize"):
        Windows(source, 4)
    windows = Windows(source, 4, resize=(6, 8))
    assert [tuple(w.shape) for w in windows] == [(4, 1, 6, 8)] * 2


def test_resize_windows(tmp_path):
    np.save(tmp_path / "a.npy", sequences((2, 6, 1, 16, 24)))
    window = Windows(open_source(tmp_path / "a.npy"), 6, resize=(8, 12))[0]
    assert window.shape == (6, 1, 8, 12) and 0 <= window.min() and window.max() <= 1


def test_split_sequences_is_deterministic_and_disjoint():
    kept, held = split_sequences(10, 0.3, seed=0)
    assert len(held) == 3 and sorted(kept + held) == list(range(10))
    assert split_sequences(10, 0.3, seed=0) == (kept, held)
    assert split_sequences(10, 0.3, seed=1) != (kept, held)
    assert [len(part) for part in split_sequences(2, 0.1, seed=0)] == [1, 1]  # at least one each side
    with pytest.raises(DataError, match="needs two or more sequences to split, got 1; pass --val_data"):
        split_sequences(1, 0.5, seed=0)


@pytest.mark.parametrize("case", ["missing", "mixed_sizes", "corrupt_image", "corrupt_video", "short_video",
                                  "idx_folder", "npz_two_arrays", "wrong_dtype", "too_long_window"])
def test_bad_input_is_one_clear_error(tmp_path, case):
    if case == "missing":
        path, match = tmp_path / "nowhere.npy", "nowhere.npy does not exist"
    elif case == "mixed_sizes":  # within one sequence
        write_frames(tmp_path / "f" / "s", sequences((3, 6, 9)))
        write_frames(tmp_path / "f" / "s" / "..", [])
        from PIL import Image
        Image.fromarray(sequences((6, 8))).save(tmp_path / "f" / "s" / "3.png")
        path, match = tmp_path / "f", r"s/3.png: frame of 8x6 \(WxH\) where .*s/0.png is 9x6: the frames of a " \
                                      r"sequence must have one size"
    elif case == "corrupt_image":
        write_frames(tmp_path / "f" / "s", sequences((3, 6, 9)))
        (tmp_path / "f" / "s" / "1.png").write_bytes(b"not a png")
        path, match = tmp_path / "f", r"s/1.png: not a readable image"
    elif case == "corrupt_video":
        (tmp_path / "v").mkdir()
        (tmp_path / "v" / "a.mp4").write_bytes(b"\x00" * 1000)
        path, match = tmp_path / "v", r"a.mp4: not a readable video"
    elif case == "short_video":
        (tmp_path / "v").mkdir()
        write_video(tmp_path / "v" / "a.mp4", sequences((5, 16, 16, 3)))
        path, match = tmp_path / "v", r"a.mp4 has 5 frames, shorter than one window of 20"
    elif case == "idx_folder":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(b"")
        path, match = tmp_path / "d", "holds MNIST IDX digit files: pass it as --digits"
    elif case == "npz_two_arrays":
        np.savez(tmp_path / "two.npz", a=np.zeros((1, 2, 3, 3)), b=np.zeros(1))
        path, match = tmp_path / "two.npz", r"an .npz of 2 arrays \(a, b\)"
    elif case == "wrong_dtype":
        np.save(tmp_path / "int.npy", np.zeros((2, 20, 4, 4), dtype=np.int32))
        path, match = tmp_path / "int.npy", "dtype int32; expected uint8"
    else:
        np.save(tmp_path / "a.npy", sequences((4, 12, 1, 4, 4)))
        path, match = tmp_path / "a.npy", r"a.npy\[0\] has 12 frames, shorter than one window of 20"
    with pytest.raises(DataError, match=match):
        Windows(open_source(path, min_length=20), 20)
