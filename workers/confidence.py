"""Per-utterance confidence from the engine's per-token log-probabilities (the results' confidence columns).

Every engine reports, per generated token, the natural-log probability the model gave the token it chose
(`EngineResult.token_logprobs`, aligned with `token_ids`; the stop token is not included). From them:

* `mean_logprob` — mean over the utterance's generated tokens; for a split utterance, over all its pieces' tokens
  together (token-weighted, not a mean of the pieces' means);
* `min_logprob` — the least likely token of the whole utterance (over all pieces);
* `confidence` = exp(mean_logprob), the geometric mean of the chosen tokens' probabilities, in [0, 1] (1: every
  token had probability 1). faster-whisper's `avg_logprob` is the same mean, before the exp.

All three are null when no token was generated, or when any piece's engine gave no log-probabilities (the bm1684x
engine with a bmodel whose head gives token ids only): an utterance is never scored on part of its tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

CONFIDENCE_COLUMNS = ("mean_logprob", "min_logprob", "confidence")


def confidence_fields(results: Sequence) -> dict[str, float | None]:
    """results: the EngineResult of each piece of one utterance, in order. Returns the three columns."""
    total, count, low = 0.0, 0, math.inf
    for res in results:
        logprobs = getattr(res, "token_logprobs", None)
        if logprobs is None:
            return dict.fromkeys(CONFIDENCE_COLUMNS)
        if len(logprobs) != len(res.token_ids):
            raise ValueError(f"{len(logprobs)} token log-probabilities for {len(res.token_ids)} tokens")
        for value in logprobs:
            value = min(float(value), 0.0)  # a log-probability; rounding in f16/bf16 can put it a hair above 0
            total += value
            count += 1
            low = min(low, value)
    if count == 0:
        return dict.fromkeys(CONFIDENCE_COLUMNS)
    mean = total / count
    return {"mean_logprob": mean, "min_logprob": low, "confidence": math.exp(mean)}
