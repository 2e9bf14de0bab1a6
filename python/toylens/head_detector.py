"""TransformerLens's ``head_detector`` on toylens models: ``detect_head(model, seq,
detection_pattern)`` scores every head's attention pattern on token sequences against a
previous-token, duplicate-token or induction pattern (or one of your own), by either error
measure. toylens models have no tokenizer: ``seq`` is token ids ``[pos]``, a list of such
sequences (the mean of their scores, as TransformerLens), or ``[batch, pos]``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _toylens

HEAD_NAMES = ["previous_token_head", "duplicate_token_head", "induction_head"]


def detector_tokens(n_ctx: int, d_vocab: int) -> np.ndarray:
    """The sequences the ``heads`` monitor and ``toylens circuits`` score heads on: ``[16, 2·half]``
    int64, ``half = min((n_ctx - 1) // 2, 20)`` random tokens (seed 0) each followed by their
    copy (shorter than the context, as TransformerLens's ``detect_head`` needs)."""
    return _toylens._detector_tokens(n_ctx, d_vocab)


def _pattern(kind: str, tokens: Any) -> np.ndarray:
    t = np.asarray(tokens).reshape(-1)
    n = len(t)
    q, k = np.indices((n, n))
    dup = (k < q) & (t[None, :] == t[:, None])
    if kind == "previous_token_head":
        return (k + 1 == q).astype(np.float32)
    if kind == "duplicate_token_head":
        return dup.astype(np.float32)
    shifted = np.zeros_like(dup)
    shifted[:, 1:] = dup[:, :-1]
    return shifted.astype(np.float32)


def get_previous_token_head_detection_pattern(tokens: Any) -> np.ndarray:
    return _pattern("previous_token_head", tokens)


def get_duplicate_token_head_detection_pattern(tokens: Any) -> np.ndarray:
    return _pattern("duplicate_token_head", tokens)


def get_induction_head_detection_pattern(tokens: Any) -> np.ndarray:
    return _pattern("induction_head", tokens)


def detect_head(
    model: Any,
    seq: Any,
    detection_pattern: Union[str, np.ndarray],
    heads: Optional[Union[List[Tuple[int, int]], Dict[int, List[int]]]] = None,
    cache: Any = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: str = "mul",
) -> np.ndarray:
    """Scores ``[n_layers, n_heads]`` (−1 for heads not in ``heads``): ``mul`` is the share of
    attention on the pattern, ``abs`` is ``1 − round(mean |A − P| · pos, 3)``. With ``cache``
    (of a run on ``seq``) its attention patterns are scored instead of a new run's."""
    if isinstance(seq, list) and seq and np.ndim(seq[0]) == 1:
        if cache is not None:
            raise ValueError("a single cache cannot be reused across several sequences")
        scores = [
            detect_head(
                model,
                s,
                detection_pattern,
                heads,
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                error_measure=error_measure,
            )
            for s in seq
        ]
        return np.mean(scores, axis=0)
    if isinstance(detection_pattern, str) and detection_pattern not in HEAD_NAMES:
        raise ValueError(f"detection_pattern must be an array or one of {HEAD_NAMES}; got {detection_pattern}")
    if not isinstance(detection_pattern, str):
        detection_pattern = np.asarray(detection_pattern, dtype=np.float32)
    scores = _toylens._detect_head(
        model,
        np.asarray(seq),
        detection_pattern,
        exclude_bos,
        exclude_current_token,
        error_measure,
        cache,
    ).astype(np.float32)
    if heads is not None:
        pairs = heads.items() if isinstance(heads, dict) else None
        wanted = (
            {(layer, h) for layer, hs in pairs for h in hs}
            if pairs is not None
            else {tuple(x) for x in heads}
        )
        keep = np.zeros_like(scores, dtype=bool)
        for layer, h in wanted:
            keep[layer, h] = True
        scores = np.where(keep, scores, -1.0).astype(np.float32)
    return scores
