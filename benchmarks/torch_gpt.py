"""The plain PyTorch nanoGPT-style model the benchmarks race against (torch is a benchmark-only dependency).

GPT-2 family: LayerNorm, GELU-tanh MLP, learned positions, tied embeddings, biases, N(0, 0.02) init.
"""
import torch
import torch.nn as tnn
import torch.nn.functional as F


class Block(tnn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int):
        super().__init__()
        self.d, self.n_heads = d, n_heads
        self.ln1, self.ln2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
        self.qkv, self.proj = tnn.Linear(d, 3 * d), tnn.Linear(d, d)
        self.fc, self.out = tnn.Linear(d, d_ff), tnn.Linear(d_ff, d)

    def forward(self, x):  # [batch, length, embed]
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(tnn.Module):
    def __init__(self, vocab: int, ctx: int, d: int, n_layers: int, n_heads: int, d_ff: int | None = None):
        super().__init__()
        self.wte, self.wpe = tnn.Embedding(vocab, d), tnn.Embedding(ctx, d)
        self.blocks = tnn.ModuleList(Block(d, n_heads, d_ff or 4 * d) for _ in range(n_layers))
        self.ln_f = tnn.LayerNorm(d)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (tnn.Linear, tnn.Embedding)):
            tnn.init.normal_(m.weight, std=0.02)
        if isinstance(m, tnn.Linear) and m.bias is not None:
            tnn.init.zeros_(m.bias)

    def forward(self, idx):  # [batch, length] → logits [batch, length, vocab]
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.wte.weight.T
