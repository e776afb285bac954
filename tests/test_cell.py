"""The reference ConvLSTMCell and ConvLSTM against an independent write-up of the ConvLSTM equations."""
import pytest
import torch
import torch.nn.functional as F

from convlstm import ConvLSTM, ConvLSTMCell, lstm_gates, lstm_gates_ref


def equations(cell, x, h, c):
    """Shi et al. (2015), eq. (3), written per gate with separate input and hidden convolutions.

    The cell's one conv over concat([x, h]) equals W_x* x + W_h* h + b; its output channels are i, f, o, g.
    """
    C, cin = cell.hidden_dim, cell.input_dim
    w, b = cell.conv.weight, cell.conv.bias
    pad = cell.padding

    def pre(k):
        rows = slice(k * C, (k + 1) * C)
        out = F.conv2d(x, w[rows, :cin], padding=pad) + F.conv2d(h, w[rows, cin:], padding=pad)
        return out + b[rows].view(1, C, 1, 1) if b is not None else out

    peep = cell.peephole
    i = torch.sigmoid(pre(0) + (cell.w_ci * c if peep else 0))
    f = torch.sigmoid(pre(1) + (cell.w_cf * c if peep else 0))
    c_next = f * c + i * torch.tanh(pre(3))
    o = torch.sigmoid(pre(2) + (cell.w_co * c_next if peep else 0))
    return o * torch.tanh(c_next), c_next


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kernel_size", [3, (5, 3)], ids=["k3", "k5x3"])
def test_cell_matches_equations(peephole, bias, kernel_size):
    torch.manual_seed(0)
    cell = ConvLSTMCell(3, 5, kernel_size, bias, backend="torch", peephole=peephole).double()
    if peephole:  # non-zero peephole weights, so the test sees them
        for w in (cell.w_ci, cell.w_cf, cell.w_co):
            torch.nn.init.normal_(w)
    x, h, c = (torch.randn(2, n, 7, 5, dtype=torch.float64) for n in (3, 5, 5))
    h_next, c_next = cell(x, (h, c))
    h_want, c_want = equations(cell, x, h, c)
    torch.testing.assert_close(h_next, h_want)
    torch.testing.assert_close(c_next, c_want)


def test_cell_state_dict_and_init_hidden():
    cell = ConvLSTMCell(input_dim=1, hidden_dim=4, kernel_size=(3, 3), bias=True)
    assert list(cell.state_dict()) == ["conv.weight", "conv.bias"]
    assert cell.conv.weight.shape == (16, 5, 3, 3)
    h, c = cell.init_hidden(2, (6, 9))
    assert h.shape == c.shape == (2, 4, 6, 9) and not h.any() and not c.any()
    peep = ConvLSTMCell(1, 4, 3, True, peephole=True)
    assert peep.w_ci.shape == peep.w_cf.shape == peep.w_co.shape == (4, 1, 1)
    # Zero-initialised peepholes: a fresh peephole cell computes what the plain cell does.
    peep.load_state_dict(cell.state_dict(), strict=False)
    x = torch.rand(2, 1, 6, 9)
    state = (torch.rand(2, 4, 6, 9), torch.rand(2, 4, 6, 9))
    torch.testing.assert_close(peep(x, state), cell(x, state))


def test_gates_ref_gradcheck():
    gates = torch.randn(2, 12, 3, 4, dtype=torch.float64, requires_grad=True)
    c_prev = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(3, 1, 1, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda g, c, *w: lstm_gates_ref(g, c, *w), (gates, c_prev, *w))


def test_convlstm_sequence_matches_cell_loop():
    torch.manual_seed(0)
    model = ConvLSTM(2, [4, 3], [3, (3, 5)], num_layers=2, batch_first=True, return_all_layers=True, backend="torch")
    assert list(model.state_dict())[0] == "cell_list.0.conv.weight"
    x = torch.rand(2, 5, 2, 8, 6)
    outputs, states = model(x)
    assert [o.shape for o in outputs] == [(2, 5, 4, 8, 6), (2, 5, 3, 8, 6)]
    layer_input = x
    for cell, out, (h_last, c_last) in zip(model.cell_list, outputs, states):
        h, c = cell.init_hidden(2, (8, 6))
        steps = []
        for t in range(5):
            h, c = cell(layer_input[:, t], (h, c))
            steps.append(h)
        layer_input = torch.stack(steps, 1)
        torch.testing.assert_close(out, layer_input)
        torch.testing.assert_close((h_last, c_last), (h, c))
    last_only, last_state = ConvLSTM(2, [4, 3], 3, 2, batch_first=True)(x)
    assert len(last_only) == len(last_state) == 1 and last_only[0].shape == (2, 5, 3, 8, 6)
    time_first, _ = ConvLSTM(2, 4, 3, 1)(x.transpose(0, 1))
    assert time_first[0].shape == (2, 5, 4, 8, 6)


def test_convlstm_defaults_are_ndrplz_time_first_and_last_layer_only():
    """ndrplz/ConvLSTM_pytorch's defaults, batch_first=False and return_all_layers=False: a (T, B, C, H, W) input,
    and only the last layer's outputs (B, T, hidden, H, W) and state."""
    torch.manual_seed(0)
    model = ConvLSTM(2, [4, 3], 3, 2, backend="torch")
    assert model.batch_first is False and model.return_all_layers is False
    x = torch.rand(5, 2, 2, 8, 6)  # (T=5, B=2, C, H, W)
    outputs, states = model(x)
    assert len(outputs) == len(states) == 1 and outputs[0].shape == (2, 5, 3, 8, 6)
    batch_first = ConvLSTM(2, [4, 3], 3, 2, batch_first=True, return_all_layers=True, backend="torch")
    batch_first.load_state_dict(model.state_dict())
    all_outputs, all_states = batch_first(x.transpose(0, 1))
    torch.testing.assert_close(outputs[0], all_outputs[-1])
    torch.testing.assert_close(states[0], all_states[-1])


@pytest.mark.parametrize("make, match", [
    (lambda: ConvLSTMCell(1, 4, 3, True, backend="fast"), "unknown backend 'fast'"),
    (lambda: ConvLSTMCell(1, 4, 4, True), "odd"),
    (lambda: ConvLSTMCell(0, 4, 3, True), "positive"),
    (lambda: ConvLSTM(1, [4, 4, 4], 3, num_layers=2), "3 entries for 2 layers"),
    (lambda: ConvLSTM(1, 4, 3, num_layers=0), "at least 1"),
], ids=["backend", "even-kernel", "zero-dim", "layer-list", "no-layers"])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_gate_shapes():
    with pytest.raises(ValueError, match=r"\(B, 4C, H, W\)"):
        lstm_gates(torch.zeros(1, 8, 2, 2), torch.zeros(1, 3, 2, 2), backend="torch")
    with pytest.raises(ValueError, match="all three peephole"):
        lstm_gates(torch.zeros(1, 8, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(2, 1, 1), backend="torch")
    with pytest.raises(ValueError, match="5-D"):
        ConvLSTM(1, 4, 3, 1)(torch.zeros(1, 1, 4, 4))
