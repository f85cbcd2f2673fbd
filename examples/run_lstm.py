"""Run the zoo's LSTM on the reference backend and check it against torch.nn.LSTM.

Usage: python examples/run_lstm.py
"""

import torch

import rnnc

B, T, H = 4, 16, 32
lstm = rnnc.compile("examples/lstm.rnn")
print(lstm, "-", lstm.strategy)

torch_lstm = torch.nn.LSTM(H, H, batch_first=True, dtype=torch.float64)
inputs = torch.randn(B, T, H, dtype=torch.float64)
h0, c0 = torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
expected, (h_n, c_n) = torch_lstm(inputs, (h0, c0))

# rnnc's cell takes the input projection W x + b_ih + b_hh; gates in PyTorch's order i, f, g, o.
x = (inputs @ torch_lstm.weight_ih_l0.T + torch_lstm.bias_ih_l0 + torch_lstm.bias_hh_l0).reshape(B, T, 1, 4, H)
R = torch_lstm.weight_hh_l0.reshape(1, 4, H, H)
out = lstm(x=x, R=R, b=torch.zeros(1, 4, H, dtype=torch.float64), state={"h": h0[0, :, None], "c": c0[0, :, None]})

error = (out.h[:, :, 0] - expected).abs().max().item()
print(f"max |rnnc - torch.nn.LSTM| over {B}x{T}x{H} outputs: {error:.2e}")
print(f"final c error: {(out.state['c'][:, 0] - c_n[0]).abs().max().item():.2e}")
