"""Moving MNIST: generated on the fly from real MNIST digits (MovingMNIST), or the fixed benchmark file
(StandardMovingMNIST); split_sequence cuts a batch into model inputs and targets."""
from .moving_mnist import MovingMNIST
from .sequence import split_sequence
from .standard import StandardMovingMNIST

__all__ = ["MovingMNIST", "StandardMovingMNIST", "split_sequence"]
