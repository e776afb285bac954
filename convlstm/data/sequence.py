"""Splitting a batch of sequences into the frames a model sees and the frames it must predict, and its no-data mask.

No-data pixels (a radar's, outside its range: convlstm.data.gridded) travel in the batch as NaN. split_valid turns
them into 0, which the models see, and a mask of the valid pixels, which the loss (convlstm.losses) and the scores
take.
"""
import torch


def split_valid(batch):
    """(batch with NaN as 0, bool mask of the finite pixels), or (batch, None) when every pixel is valid: data
    without no-data pixels take exactly the path they always took. One check of the whole batch (a host sync on a
    GPU, once per batch)."""
    invalid = torch.isnan(batch)
    if not bool(invalid.any()):
        return batch, None
    return batch.masked_fill(invalid, 0), ~invalid


def split_masked(batch, n_in, n_out):
    """split_valid, then split_sequence: (x, y, the valid pixels of y or None), NaN as 0 in x and y."""
    batch, valid = split_valid(batch)
    x, y = split_sequence(batch, n_in=n_in, n_out=n_out)
    return x, y, None if valid is None else valid[:, n_in:n_in + n_out]



def split_sequence(batch, n_in=10, n_out=None):
    """Split (B, T, C, H, W) into inputs x = frames [0, n_in) and targets y = the next n_out frames (default: the rest).

    Returns views (x, y): x (B, n_in, C, H, W), y (B, n_out, C, H, W).
    """
    if batch.dim() != 5:
        raise ValueError(f"batch of shape {tuple(batch.shape)}: expected 5 dims (B, T, C, H, W)")
    frames = batch.shape[1]
    if isinstance(n_in, bool) or not isinstance(n_in, int) or n_in < 1:
        raise ValueError(f"n_in={n_in!r}: expected an integer >= 1")
    if frames <= n_in:
        raise ValueError(f"batch has T={frames} frames: need more than n_in={n_in} to leave frames to predict")
    if n_out is None:
        n_out = frames - n_in
    if isinstance(n_out, bool) or not isinstance(n_out, int) or not 1 <= n_out <= frames - n_in:
        raise ValueError(f"n_out={n_out!r}: expected an integer in [1, {frames - n_in}] (T={frames}, n_in={n_in})")
    return batch[:, :n_in], batch[:, n_in:n_in + n_out]
