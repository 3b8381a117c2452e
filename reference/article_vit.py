"""The article's PyTorch ViT ("Implementing Vision Transformer (ViT) from Scratch"), module for module,
with the same parameter names: the reference npvit is compared against. Both attention variants:
per-head (``heads.{h}.query``) and the fused ``qkv_projection``."""
import math

import torch
from torch import nn


class NewGELUActivation(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class PatchEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_patches = (config["image_size"] // config["patch_size"]) ** 2
        self.projection = nn.Conv2d(config["num_channels"], config["hidden_size"],
                                    kernel_size=config["patch_size"], stride=config["patch_size"])

    def forward(self, x):
        return self.projection(x).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.randn(1, 1, config["hidden_size"]))
        self.position_embeddings = nn.Parameter(
            torch.randn(1, self.patch_embeddings.num_patches + 1, config["hidden_size"]))
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, x):
        x = self.patch_embeddings(x)
        cls_tokens = self.cls_token.expand(x.size(0), -1, -1)
        x = torch.cat((cls_tokens, x), dim=1) + self.position_embeddings
        return self.dropout(x)


class AttentionHead(nn.Module):
    def __init__(self, hidden_size, head_size, dropout, bias=True):
        super().__init__()
        self.attention_head_size = head_size
        self.query = nn.Linear(hidden_size, head_size, bias=bias)
        self.key = nn.Linear(hidden_size, head_size, bias=bias)
        self.value = nn.Linear(hidden_size, head_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        return torch.matmul(probs, v), probs


class MultiHeadAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        D, H = config["hidden_size"], config["num_attention_heads"]
        self.heads = nn.ModuleList([AttentionHead(D, D // H, config["attention_probs_dropout_prob"],
                                                  config["qkv_bias"]) for _ in range(H)])
        self.output_projection = nn.Linear(D, D)
        self.output_dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, x, output_attentions=False):
        outs = [head(x) for head in self.heads]
        out = self.output_dropout(self.output_projection(torch.cat([o for o, _ in outs], dim=-1)))
        return out, (torch.stack([p for _, p in outs], dim=1) if output_attentions else None)


class FasterMultiHeadAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        D, H = config["hidden_size"], config["num_attention_heads"]
        self.H, self.hs = H, D // H
        self.qkv_projection = nn.Linear(D, 3 * D, bias=config["qkv_bias"])
        self.attn_dropout = nn.Dropout(config["attention_probs_dropout_prob"])
        self.output_projection = nn.Linear(D, D)
        self.output_dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, x, output_attentions=False):
        B, N, D = x.shape
        q, k, v = torch.chunk(self.qkv_projection(x), 3, dim=-1)
        q, k, v = (t.view(B, N, self.H, self.hs).transpose(1, 2) for t in (q, k, v))
        probs = self.attn_dropout(nn.functional.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hs), dim=-1))
        out = (probs @ v).transpose(1, 2).contiguous().view(B, N, D)
        return self.output_dropout(self.output_projection(out)), (probs if output_attentions else None)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_1 = nn.Linear(config["hidden_size"], config["intermediate_size"])
        self.activation = NewGELUActivation()
        self.dense_2 = nn.Linear(config["intermediate_size"], config["hidden_size"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def forward(self, x):
        return self.dropout(self.dense_2(self.activation(self.dense_1(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        fast = config.get("use_faster_attention", True)
        self.attention = FasterMultiHeadAttention(config) if fast else MultiHeadAttention(config)
        self.layernorm_1 = nn.LayerNorm(config["hidden_size"])
        self.mlp = MLP(config)
        self.layernorm_2 = nn.LayerNorm(config["hidden_size"])

    def forward(self, x, output_attentions=False):
        a, probs = self.attention(self.layernorm_1(x), output_attentions)
        x = x + a
        x = x + self.mlp(self.layernorm_2(x))
        return x, probs


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.blocks = nn.ModuleList([Block(config) for _ in range(config["num_hidden_layers"])])

    def forward(self, x, output_attentions=False):
        probs = []
        for block in self.blocks:
            x, p = block(x, output_attentions)
            probs.append(p)
        return x, (probs if output_attentions else None)


class ViTForClassfication(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embedding = Embeddings(config)
        self.encoder = Encoder(config)
        self.classifier = nn.Linear(config["hidden_size"], config["num_classes"])

    def forward(self, x, output_attentions=False):
        h, probs = self.encoder(self.embedding(x), output_attentions)
        return self.classifier(h[:, 0, :]), probs
