"""The fused ops of a ConvLSTM step, each beside its pure-PyTorch reference: lstm_gates/ (the gate math; Triton,
CUDA and the CUDA code's CPU twin), conv_cat (the convolution over concat([x, h])) and conv_frame (the model's head,
one frame at a time). See README.md here. Import from the modules: the names here are the modules' own."""
