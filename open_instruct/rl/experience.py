"""Experience: a scored batch of sequences and everything the update needs, as padded [N, T] tensors
(the batch contract of docs/architecture.md, plus old/reference log-probs, values, advantages)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Experience:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != -100

    def slice(self, lo: int, hi: int) -> Experience:
        """Rows lo..hi-1 at the full width (so per-process results concatenate)."""
        return Experience(
            **{
                f.name: (t[lo:hi] if (t := getattr(self, f.name)) is not None else None)
                for f in dataclasses.fields(self)
            }
        )

    def rows(self, idx) -> dict:
        """A micro-batch of rows `idx`, trimmed to its longest sequence."""
        idx = torch.as_tensor(idx)
        width = int(self.attention_mask[idx].sum(1).max())
        out = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is not None:
                out[f.name] = t[idx, :width]
        return out


def build_experience(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Experience:
    n = len(responses)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    att = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        att[i, : len(seq)] = 1
        pos[i, : len(seq)] = torch.arange(len(seq))
        if r:
            labels[i, len(p) : len(seq)] = torch.tensor(r)
    return Experience(ids, att, pos, labels)


@torch.no_grad()
def forward_in_chunks(fn, exp: Experience, chunk: int) -> torch.Tensor:
    """Runs `fn(batch) -> [b, t]` over row chunks and re-pads to the full width."""
    out = torch.zeros(exp.input_ids.shape, dtype=torch.float32)
    for s in range(0, exp.input_ids.shape[0], chunk):
        idx = list(range(s, min(s + chunk, exp.input_ids.shape[0])))
        batch = exp.rows(idx)
        res = fn(batch)
        out[idx[0] : idx[-1] + 1, : res.shape[1]] = res.float().cpu()
    return out
