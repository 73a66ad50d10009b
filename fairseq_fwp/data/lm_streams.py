"""Token-stream layouts for language modelling with a carried fast weight state.

A split is one token stream ``S = [eos] + tokens`` (fairseq's ``--sample-break-mode none``
convention: every line ends with ``</s>`` and the first token is predicted from ``</s>``),
so target ``t`` (0-based) is ``S[t + 1]`` with inputs ``S[: t + 1]``. Every layout below
is a list of *spans* ``(start, length)``: the source is ``S[start : start + length]``, the
target ``S[start + 1 : start + length + 1]``.

* :meth:`LMStreamDataset.segments` -- ``n_streams`` contiguous streams of equal length
  (the remainder of the split is dropped, as in Transformer-XL), each cut into segments
  of ``L`` tokens. Items are ordered batch-major: batch ``i`` holds segment ``i`` of every
  stream of a rank, row ``b`` = stream ``b``, so row ``b`` of batch ``i + 1`` continues
  row ``b`` of batch ``i``. With ``n_streams = 1`` this is the whole split in order
  (``--fwp-eval-mode full``).
* :meth:`LMStreamDataset.windows` -- one span per target token: the window of the at most
  ``L`` tokens ending at it; only its last position is scored (``--fwp-eval-mode
  sliding``). The first ``L`` targets are the paper's first window (every position of
  ``S[:L]`` scored, position ``t`` with context ``S[:t + 1]``); every later target is the
  last token of a window of ``L`` tokens moved one token at a time.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from fairseq.data import FairseqDataset


def flatten_indexed_dataset(dataset, eos: int) -> torch.Tensor:
    """``[eos] + concat(lines)`` of a fairseq indexed dataset, as one int32/int64 tensor."""
    sizes = np.asarray(dataset.sizes, dtype=np.int64)
    total = int(sizes.sum())
    dtype = np.int32 if total < 2**31 else np.int64
    out = np.empty(total + 1, dtype=dtype)
    out[0] = eos
    pos = 1
    for i in range(len(dataset)):
        item = np.asarray(dataset[i])
        out[pos : pos + len(item)] = item
        pos += len(item)
    if pos != total + 1:
        raise ValueError(f"indexed dataset sizes ({total} tokens) disagree with its items ({pos - 1} tokens)")
    return torch.from_numpy(out)


class LMStreamDataset(FairseqDataset):
    """Spans of one token stream (see the module docstring).

    A sample holds ``net_input = {src_tokens [B, T], src_lengths [B]}`` (right-padded),
    ``target`` ([B, T] for segments; [B, 1] = the last position of each window for
    windows), ``ntokens`` (scored tokens), ``nsentences``, ``id`` and ``fwp_segment`` (the
    segment index of the batch's first row: 0 marks the start of the streams).
    """

    def __init__(
        self,
        stream: torch.Tensor,
        starts: np.ndarray,
        lengths: np.ndarray,
        pad: int,
        last_only: bool = False,
        segment_ids: Optional[np.ndarray] = None,
        n_streams: int = 1,
        out_vocab: Optional[int] = None,
        unk: Optional[int] = None,
    ):
        super().__init__()
        self.stream = stream
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.pad = pad
        self.last_only = last_only
        self.segment_ids = segment_ids
        self.n_streams = n_streams
        self.out_vocab = out_vocab
        self.unk = unk

    # ------------------------------------------------------------- layouts
    @property
    def n_targets(self) -> int:
        """Number of target tokens in the stream (the split's token count)."""
        return len(self.stream) - 1

    @classmethod
    def segments(
        cls, stream: torch.Tensor, tokens_per_sample: int, pad: int, n_streams: int = 1,
        rows: Optional[Sequence[int]] = None, **kw,
    ) -> "LMStreamDataset":
        """``n_streams`` equal streams cut into segments of ``tokens_per_sample``; keep the
        streams ``rows`` (default: all), items batch-major (batch i = segment i of every row)."""
        n_targets = len(stream) - 1
        per_stream = n_targets // n_streams
        if per_stream < 1:  # the task checks its splits first and names the flags
            raise ValueError(f"a stream of {n_targets} tokens cannot be cut into {n_streams} streams")
        rows = list(range(n_streams)) if rows is None else list(rows)
        L = tokens_per_sample
        seg_starts = np.arange(0, per_stream, L, dtype=np.int64)
        seg_lens = np.minimum(L, per_stream - seg_starts)
        stream_starts = np.asarray(rows, dtype=np.int64) * per_stream
        starts = (seg_starts[:, None] + stream_starts[None, :]).reshape(-1)
        lengths = np.repeat(seg_lens, len(rows))
        segment_ids = np.repeat(np.arange(len(seg_starts)), len(rows))
        return cls(stream, starts, lengths, pad, segment_ids=segment_ids, n_streams=len(rows), **kw)

    @classmethod
    def windows(cls, stream: torch.Tensor, tokens_per_sample: int, pad: int, **kw) -> "LMStreamDataset":
        """One window per target ``t``: source ``S[max(0, t + 1 - L) : t + 1]``, scored at its end."""
        t = np.arange(len(stream) - 1, dtype=np.int64)
        starts = np.maximum(0, t + 1 - tokens_per_sample)
        return cls(stream, starts, t + 1 - starts, pad, last_only=True, **kw)

    def batches(self) -> List[List[int]]:
        """Stream-ordered batches of a :meth:`segments` layout: batch i = segment i of every row."""
        n = self.n_streams
        return [list(range(i, i + n)) for i in range(0, len(self), n)]

    # ------------------------------------------------------------ dataset
    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> Dict:
        return {"id": index}

    @property
    def sizes(self) -> np.ndarray:
        return self.lengths

    def num_tokens(self, index: int) -> int:
        return int(self.lengths[index])

    def num_tokens_vec(self, indices):
        return self.lengths[indices]

    def size(self, index: int) -> int:
        return int(self.lengths[index])

    def ordered_indices(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def collater(self, samples: List[Dict]) -> Dict:
        if len(samples) == 0:
            return {}
        ids = torch.tensor([s["id"] for s in samples], dtype=torch.long)
        starts = torch.from_numpy(self.starts[ids.numpy()])
        lengths = torch.from_numpy(self.lengths[ids.numpy()])
        T = int(lengths.max())
        offsets = torch.arange(T)
        valid = offsets[None, :] < lengths[:, None]
        index = (starts[:, None] + offsets[None, :]).clamp_(max=len(self.stream) - 2)
        src = self.stream[index].long().masked_fill_(~valid, self.pad)
        tgt = self.stream[index + 1].long().masked_fill_(~valid, self.pad)
        if self.out_vocab is not None:  # --output-dictionary-size: unseen outputs are <unk>
            tgt = tgt.masked_fill(valid & (tgt >= self.out_vocab), self.unk)
        if self.last_only:
            tgt = tgt.gather(1, (lengths - 1)[:, None])
        sample = {
            "id": ids,
            "nsentences": len(samples),
            "ntokens": int(len(samples) if self.last_only else lengths.sum()),
            "net_input": {"src_tokens": src, "src_lengths": lengths},
            "target": tgt,
        }
        if self.segment_ids is not None:
            sample["fwp_segment"] = int(self.segment_ids[ids[0]])
        return sample


@contextmanager
def score_last_positions(decoder):
    """While active, ``decoder`` (a fairseq decoder with ``output_layer``, such as
    ``TransformerDecoderBase``) scores :meth:`LMStreamDataset.windows` batches: the features
    of each window's last position (``src_lengths - 1``) are picked *before* the output
    layer, so the output projection (full vocabulary) or, with adaptive softmax, the
    adaptive softmax applied later by ``get_normalized_probs`` runs on the scored tokens
    only; the decoder returns ``[B, 1, ...]``. ``src_lengths`` comes from the call
    (fairseq's LMs pass ``net_input`` to the decoder)."""
    lengths: List[torch.Tensor] = []

    def remember_lengths(module, args, kwargs):
        src_lengths = kwargs.get("src_lengths")
        if src_lengths is None:
            raise ValueError("sliding-window scoring needs src_lengths in net_input")
        lengths[:] = [src_lengths]

    project = decoder.output_layer  # the bound method; the instance attribute below shadows it

    def output_layer(features, **kwargs):
        idx = (lengths[0].to(features.device) - 1).long()
        last = features[torch.arange(features.size(0), device=features.device), idx].unsqueeze(1)
        return project(last, **kwargs)

    handle = decoder.register_forward_pre_hook(remember_lengths, with_kwargs=True)
    decoder.output_layer = output_layer
    try:
        yield
    finally:
        del decoder.output_layer
        handle.remove()
