"""Text encoders: prompt strings -> embeddings [B, S, text_dim] for the model's cross-attention.

- `UMT5TextEncoder`: transformers' UMT5 encoder + tokenizer from a local checkpoint folder, with
  diffusers' WanPipeline prompt handling (ftfy + HTML unescape + whitespace clean-up; padding to
  `max_length` with an attention mask; embeddings cut to the true length, then zero-padded), so
  framecast and diffusers see the same conditioning.
- `T5TextEncoder`: transformers' T5 encoder + tokenizer from a local LattePipeline folder, with
  LattePipeline's prompt handling (see the class).
- `BuiltinTextEncoder`: a learned word + position embedding over the built-in world's closed
  vocabulary (ships inside the tiny presets' weights). Words outside the vocabulary are an error
  that names them, never silently mapped to <unk>.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from torch import nn


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning: ftfy (if installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder:
    """UMT5 encoder from `folder/text_encoder` and its tokenizer from `folder/tokenizer`."""

    def __init__(self, folder: str | Path, max_length: int = 512, device="cpu", dtype=None):
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        kwargs = {"dtype": dtype} if dtype is not None else {}
        self.encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", **kwargs).to(device).eval()
        self.max_length = max_length
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer([prompt_clean(p) for p in prompts], padding="max_length",
                             max_length=self.max_length, truncation=True, add_special_tokens=True,
                             return_attention_mask=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.encoder(ids, mask).last_hidden_state  # (B, S, text_dim)
        lengths = mask.gt(0).sum(dim=1)
        # Rows past the true length are zeroed, as diffusers does (the model attends to all S rows).
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        return hidden * keep[..., None].to(hidden.dtype)


class T5TextEncoder:
    """T5 encoder from `folder/text_encoder` and its tokenizer from `folder/tokenizer`, as LattePipeline
    encodes one prompt (and its negative for CFG):
    - prompts lower-cased and stripped (the pipeline's `clean_caption` needs bs4; without it diffusers
      falls back to exactly this);
    - padded to `max_length` (LattePipeline: 120) with an attention mask the encoder sees;
    - `mask_feature`: every row cut to the first prompt's token count (rows kept as the encoder made
      them, not zeroed), so the negative prompt's embeddings have the positive's length."""

    def __init__(self, folder: str | Path, max_length: int = 120, device="cpu", dtype=None, mask_feature: bool = True):
        from transformers import AutoTokenizer, T5EncoderModel

        folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        kwargs = {"dtype": dtype} if dtype is not None else {}
        self.encoder = T5EncoderModel.from_pretrained(folder / "text_encoder", **kwargs).to(device).eval()
        self.max_length, self.mask_feature = max_length, mask_feature
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts (the conditioning prompt first) -> [B, S, d_model]."""
        tok = self.tokenizer([p.lower().strip() for p in prompts], padding="max_length",
                             max_length=self.max_length, truncation=True, add_special_tokens=True,
                             return_attention_mask=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.encoder(ids, attention_mask=mask).last_hidden_state  # (B, max_length, d_model)
        return hidden[:, :int(mask[0].sum())] if self.mask_feature else hidden


class BuiltinTextEncoder(nn.Module):
    """Word + position embeddings over the world vocabulary: [B, max_length] ids -> [B, max_length, dim]."""

    def __init__(self, text_dim: int, max_length: int = 16):
        super().__init__()
        from framecast.world.captions import VOCABULARY

        self.max_length = max_length
        self.word = nn.Embedding(len(VOCABULARY), text_dim)
        self.position = nn.Embedding(max_length, text_dim)
        # unit-scale vectors: at std 0.02 the text signal is ~50x below the video features and a
        # fresh model learns to ignore the prompt (seen when training the tiny model)
        nn.init.normal_(self.word.weight, std=1.0)
        nn.init.normal_(self.position.weight, std=1.0)

    def ids(self, prompts: list[str]) -> torch.Tensor:
        from framecast.world.captions import tokenize

        return torch.tensor([tokenize(p, max_len=self.max_length) for p in prompts], dtype=torch.long)

    def forward(self, ids_BS: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids_BS.shape[1], device=ids_BS.device)
        return self.word(ids_BS) + self.position(pos)[None]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.ids(prompts).to(self.word.weight.device))
