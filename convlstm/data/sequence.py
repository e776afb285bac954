"""Splitting a batch of sequences into the frames a model sees and the frames it must predict."""


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
