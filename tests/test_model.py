"""EncoderDecoderConvLSTM is drop-in for the tutorial's model: same state_dict, same outputs for the same weights."""
import pytest
import torch

from convlstm import EncoderDecoderConvLSTM
from tutorial_model import TutorialEncoderDecoder


@pytest.mark.parametrize("nf, in_chan, size", [(4, 1, (8, 8)), (3, 2, (7, 5))], ids=["nf4-c1-8x8", "nf3-c2-7x5"])
def test_same_outputs_for_same_weights(nf, in_chan, size):
    torch.manual_seed(0)
    tutorial = TutorialEncoderDecoder(nf, in_chan).double()
    ours = EncoderDecoderConvLSTM(nf, in_chan, backend="torch").double()
    assert list(ours.state_dict()) == list(tutorial.state_dict())
    ours.load_state_dict(tutorial.state_dict())  # strict: a tutorial checkpoint loads unchanged
    x = torch.rand(2, 10, in_chan, *size, dtype=torch.float64)
    want = tutorial(x, future_seq=10)
    got = ours(x, future_seq=10)
    assert got.shape == (2, 1, 10, *size)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(ours.named_parameters(), tutorial.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_future_seq_and_options():
    torch.manual_seed(0)
    model = EncoderDecoderConvLSTM(4, 1, backend="torch")
    x = torch.rand(1, 3, 1, 6, 6)
    assert model(x, future_seq=5).shape == (1, 1, 5, 6, 6)
    with pytest.raises(ValueError, match="future_seq must be at least 1, got 0"):
        model(x)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(x[0], future_seq=2)
    # decoder_from_encoder changes the decoder's start state, so the outputs differ for the same weights.
    warm = EncoderDecoderConvLSTM(4, 1, backend="torch", decoder_from_encoder=True)
    warm.load_state_dict(model.state_dict())
    assert not torch.allclose(warm(x, 2), model(x, 2))
    wide = EncoderDecoderConvLSTM(4, 1, kernel_size=5, peephole=True)
    assert wide.encoder_1_convlstm.conv.weight.shape == (16, 5, 5, 5)
    assert "encoder_1_convlstm.w_ci" in wide.state_dict()
