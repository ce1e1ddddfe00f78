"""Byte-level tokenizer: UTF-8 bytes shifted past a few special ids.

Any string is representable, there is no vocabulary file to download or version, and the
vocabulary is small (259 ids), which suits the short captions of our datasets.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_ID = 0  # padding; the text encoder masks it out
BOS_ID = 1  # start of text
EOS_ID = 2  # end of text
NUM_SPECIAL = 3  # byte b is token b + NUM_SPECIAL
VOCAB_SIZE = 256 + NUM_SPECIAL


def _truncate_utf8(data: bytes, limit: int) -> bytes:
  """Cuts `data` to at most `limit` bytes without splitting a multi-byte character."""
  if len(data) <= limit:
    return data
  cut = limit
  while cut > 0 and (data[cut] & 0xC0) == 0x80:  # data[cut] continues a character
    cut -= 1
  return data[:cut]


def encode(texts: str | Sequence[str], max_len: int, *, add_bos: bool = True,
           add_eos: bool = True) -> np.ndarray:
  """Encodes text(s) to int32 [B, max_len] ids, right-padded with PAD_ID.

  Text longer than fits is truncated at a character boundary; BOS/EOS are always kept so
  the encoder sees where the text starts and ends. A single string gives B = 1.
  """
  if isinstance(texts, str):
    texts = [texts]
  if isinstance(texts, bytes) or not all(isinstance(t, str) for t in texts):
    raise TypeError(f'text.encode expects a str or a list of str, got {type(texts).__name__}'
                    f' containing {sorted({type(t).__name__ for t in texts})}')
  num_special = int(add_bos) + int(add_eos)
  if max_len < num_special + 1:
    raise ValueError(f'text.encode: max_len={max_len} leaves no room for text after '
                     f'{num_special} special token(s); use max_len >= {num_special + 1}')
  out = np.full((len(texts), max_len), PAD_ID, dtype=np.int32)
  for i, text in enumerate(texts):
    data = _truncate_utf8(text.encode('utf-8'), max_len - num_special)
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32) + NUM_SPECIAL
    ids = ([BOS_ID] if add_bos else []) + ids.tolist() + ([EOS_ID] if add_eos else [])
    out[i, :len(ids)] = ids
  return out


def decode(ids: np.ndarray | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
  """Inverse of `encode`: drops special ids; [L] gives a str, [B, L] a list of str."""
  arr = np.asarray(ids)
  if arr.ndim == 1:
    return _decode_row(arr)
  if arr.ndim == 2:
    return [_decode_row(row) for row in arr]
  raise ValueError(f'text.decode expects ids of shape [L] or [B, L], got {arr.shape}')


def _decode_row(row: np.ndarray) -> str:
  if np.any((row < 0) | (row >= VOCAB_SIZE)):
    raise ValueError(f'text.decode: ids must lie in [0, {VOCAB_SIZE}), got '
                     f'min {row.min()} max {row.max()}')
  data = (row[row >= NUM_SPECIAL] - NUM_SPECIAL).astype(np.uint8).tobytes()
  return data.decode('utf-8', errors='replace')
