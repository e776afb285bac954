"""A plain transcription of the tutorial's encoder-decoder ConvLSTM (its cell, its model, its state_dict layout).

Independent of the package on purpose: the tests load the same weights into both and compare outputs, which is what
"drop-in compatible" means for users with checkpoints of the tutorial's model.
"""
import torch
from torch import nn


class TutorialCell(nn.Module):
    def __init__(self, input_dim, hidden_dim, kernel_size, bias):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size,
                              padding=(kernel_size[0] // 2, kernel_size[1] // 2), bias=bias)

    def forward(self, input_tensor, cur_state):
        h_cur, c_cur = cur_state
        out = self.conv(torch.cat([input_tensor, h_cur], dim=1))
        cc_i, cc_f, cc_o, cc_g = torch.split(out, self.hidden_dim, dim=1)
        c_next = torch.sigmoid(cc_f) * c_cur + torch.sigmoid(cc_i) * torch.tanh(cc_g)
        h_next = torch.sigmoid(cc_o) * torch.tanh(c_next)
        return h_next, c_next

    def init_hidden(self, batch_size, image_size):
        zeros = torch.zeros(batch_size, self.hidden_dim, *image_size, device=self.conv.weight.device)
        return zeros, zeros.clone()


class TutorialEncoderDecoder(nn.Module):
    def __init__(self, nf, in_chan):
        super().__init__()
        self.encoder_1_convlstm = TutorialCell(in_chan, nf, (3, 3), True)
        self.encoder_2_convlstm = TutorialCell(nf, nf, (3, 3), True)
        self.decoder_1_convlstm = TutorialCell(nf, nf, (3, 3), True)
        self.decoder_2_convlstm = TutorialCell(nf, nf, (3, 3), True)
        self.decoder_CNN = nn.Conv3d(nf, 1, kernel_size=(1, 3, 3), padding=(0, 1, 1))

    def forward(self, x, future_seq=0, hidden_state=None):
        b, seq_len, _, h, w = x.size()
        h_t, c_t = self.encoder_1_convlstm.init_hidden(b, (h, w))
        h_t2, c_t2 = self.encoder_2_convlstm.init_hidden(b, (h, w))
        h_t3, c_t3 = self.decoder_1_convlstm.init_hidden(b, (h, w))
        h_t4, c_t4 = self.decoder_2_convlstm.init_hidden(b, (h, w))
        for t in range(seq_len):
            h_t, c_t = self.encoder_1_convlstm(x[:, t, :, :], [h_t, c_t])
            h_t2, c_t2 = self.encoder_2_convlstm(h_t, [h_t2, c_t2])
        encoder_vector = h_t2
        outputs = []
        for t in range(future_seq):
            h_t3, c_t3 = self.decoder_1_convlstm(encoder_vector, [h_t3, c_t3])
            h_t4, c_t4 = self.decoder_2_convlstm(h_t3, [h_t4, c_t4])
            encoder_vector = h_t4
            outputs += [h_t4]
        outputs = torch.stack(outputs, 1).permute(0, 2, 1, 3, 4)
        return torch.nn.Sigmoid()(self.decoder_CNN(outputs))
