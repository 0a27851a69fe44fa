"""Simulator: ours vs the paper code's simulator loop, and vs recomputing the header per record.

Same model (the embedded SmolLM2-135M-Instruct), same records (real corpus rows), same prompt
ids, one rule. Each side has its own fresh simulator object (no memo or KV cache shared).

- ours (``LocalSimulator.simulate``): header KV prefilled once per simulator, the rule appended
  once per call, records sorted by length and run 8 at a time on views of that cache.
- paper (paper-method.md 5.5): the header cached once with the batch's rows repeated; per
  explanation a deep copy of it with the rule appended; chunks of 2 records in order, the last
  padded with copies of its last record, each chunk on a fresh deep copy of the rule's cache.
- uncached: header + rule + record in one forward pass per record (no cache at all).

``speedup_vs_paper`` and ``speedup_cached`` compare wall time of the same simulation;
``max_ev_diff_*`` are the largest differences in expected value against ours.

    python -m benchmarks.simulator
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from benchmarks._common import report, setup, sized, timed
from featureinterp.activations import kv_cache
from featureinterp.activations.models import _base_model
from featureinterp.simulate.simulator import LocalSimulator, expected_values

N_RECORDS = sized(24, 4)
RULE = "words about politics and the state"
PAPER_BATCH = 2
"""The paper's simulator batch for Figures 3-5 (paper-method.md 9)."""


class PaperSimulator:
    """The paper code's caching and batching (paper-method.md 5.5) over our prompt's token ids,
    so both sides read the same prompt and only the loop differs."""

    def __init__(self, sim: LocalSimulator, batch: int = PAPER_BATCH) -> None:
        self.sim, self.batch, self.forward_tokens = sim, batch, 0
        self.header = self._prefill(sim.header_ids, kv_cache.new_cache(sim.model))  # at start-up

    @torch.no_grad()
    def _prefill(self, ids: list[int], cache):
        start = cache.get_seq_length()
        x = torch.tensor([ids] * self.batch)  # the batch dimension = the inference batch size
        pos = torch.arange(start, start + len(ids))[None].expand(self.batch, -1)
        _base_model(self.sim.model)(input_ids=x, position_ids=pos, cache=cache, use_cache=True)
        self.forward_tokens += x.numel()
        return cache

    @torch.no_grad()
    def simulate(self, explanation: str, records: list[list[str]]) -> list[np.ndarray]:
        sim, b = self.sim, self.batch
        rule_cache = self._prefill(sim.rule_ids(explanation), copy.deepcopy(self.header))  # factory clone
        prefix_len = rule_cache.get_seq_length()
        blocks = [sim.record_ids(tokens) for tokens in records]
        pad = sim.tok.pad_token_id if sim.tok.pad_token_id is not None else 0
        out: list[np.ndarray] = []
        for lo in range(0, len(blocks), b):
            real = blocks[lo : lo + b]
            chunk = real + [real[-1]] * (b - len(real))  # the last chunk padded with copies
            length = max(len(ids) for ids, _ in chunk)
            x = torch.full((b, length), pad, dtype=torch.long)
            mask = torch.zeros((b, prefix_len + length), dtype=torch.long)
            mask[:, :prefix_len] = 1
            for i, (ids, _) in enumerate(chunk):
                x[i, : len(ids)] = torch.tensor(ids)
                mask[i, prefix_len : prefix_len + len(ids)] = 1
            pos = (prefix_len + torch.arange(length)).expand(b, -1)
            cache = copy.deepcopy(rule_cache)  # a deep copy of the cached KV per chunk
            hidden = _base_model(sim.model)(
                input_ids=x, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
            )[0]
            self.forward_tokens += x.numel()
            for i, (_, positions) in enumerate(real):
                idx = torch.tensor(positions, dtype=torch.long)
                out.append(expected_values(sim._digit_logits(hidden[i, idx])).numpy())
        return out


def main() -> None:
    model, tok, rows, _ = setup(N_RECORDS, layer=5)
    records = [tok.batch_decode([[i] for i in row[1:]]) for row in rows.tolist()]
    ours_sim = LocalSimulator(model, tok, batch_size=8)
    ours_sim.simulate("warm-up", records[:2])  # header prefilled, as once per run
    paper = PaperSimulator(LocalSimulator(model, tok, batch_size=8, memo_size=0))
    paper.simulate("warm-up", records[:2])
    plain_sim = LocalSimulator(model, tok, batch_size=8, memo_size=0)
    plain_sim.simulate("warm-up", records[:2], cached=False)
    work = {
        "ours": ours_sim.forward_tokens, "paper": paper.forward_tokens, "uncached": plain_sim.forward_tokens
    }  # fmt: skip

    cached, t_cached = timed(ours_sim.simulate, RULE, records)
    via_paper, t_paper = timed(paper.simulate, RULE, records)
    plain, t_plain = timed(plain_sim.simulate, RULE, records, cached=False)
    assert ours_sim.memo_hits == 0  # ours computed every record of this rule
    work = {
        "ours": ours_sim.forward_tokens - work["ours"],
        "paper": paper.forward_tokens - work["paper"],
        "uncached": plain_sim.forward_tokens - work["uncached"],
    }
    n_tokens = sum(len(r) for r in records)
    n_chunks = -(-N_RECORDS // PAPER_BATCH)
    # the paper's work: the rule for every batch row, then every chunk padded to its longest record
    assert work["paper"] >= PAPER_BATCH * len(ours_sim.rule_ids(RULE)) + n_chunks * PAPER_BATCH * 2, work

    def diff(other: list[np.ndarray]) -> float:
        return float(max(np.abs(a - b).max() for a, b in zip(cached, other, strict=True)))

    report(
        "simulator",
        {"speedup_vs_paper": round(t_paper / t_cached, 2), "speedup_cached": round(t_plain / t_cached, 2)},
        {
            "max_ev_diff_paper": diff(via_paper),
            "max_ev_diff_uncached": diff(plain),
            "records": N_RECORDS,
            "record_tokens": n_tokens,
            "header_tokens": len(ours_sim.header_ids),
            "forward_tokens": work,
            "tokens_per_s": {
                "ours": round(n_tokens / t_cached, 1),
                "paper": round(n_tokens / t_paper, 1),
                "uncached": round(n_tokens / t_plain, 1),
            },
        },
    )


if __name__ == "__main__":
    main()
