"""Simulator: shared-prefix KV cache vs recomputing the header for every record.

Same model (the embedded SmolLM2-135M-Instruct), same records (real corpus rows), same run.
``speedup_cached`` compares record tokens simulated per second; ``max_ev_diff`` is the largest
difference between the two paths' expected values.

    python -m benchmarks.simulator
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import report, setup, timed
from featureinterp.simulator import LocalSimulator

N_RECORDS = 24


def main() -> None:
    model, tok, rows, _ = setup(N_RECORDS, layer=5)
    records = [tok.batch_decode([[i] for i in row[1:]]) for row in rows.tolist()]
    sim = LocalSimulator(model, tok, batch_size=8)
    sim.simulate("warm-up", records[:2])
    cached, t_cached = timed(sim.simulate, "words about politics and the state", records)
    plain, t_plain = timed(sim.simulate, "words about politics and the state", records, cached=False)
    n_tokens = sum(len(r) for r in records)
    report(
        "simulator",
        {"speedup_cached": round(t_plain / t_cached, 2)},
        {
            "max_ev_diff": float(max(np.abs(a - b).max() for a, b in zip(cached, plain, strict=True))),
            "records": N_RECORDS,
            "header_tokens": len(sim.header_ids),
            "tokens_per_s_cached": round(n_tokens / t_cached, 1),
            "tokens_per_s_uncached": round(n_tokens / t_plain, 1),
        },
    )


if __name__ == "__main__":
    main()
