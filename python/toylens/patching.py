"""Activation patching with TransformerLens's ``patching`` functions and arguments
(``get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, patching_metric)`` and the rest),
plus path patching and attribution patching.

``patching_metric`` is a function of the logits (called once per patched run, as in
TransformerLens) or one of this module's metrics (``logit_diff``, ``logit``, ``loss``, ``prob``),
which toylens computes itself, running the patched runs in parallel; they are also plain
functions of the logits (numpy or torch), so they work in TransformerLens too."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _toylens

__all__ = [
    "Metric",
    "logit_diff",
    "logit",
    "loss",
    "prob",
    "generic_activation_patch",
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_block_every",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "attribution_patch",
    "path_patch",
]


class Metric:
    """A scalar of the logits at the last position, averaged over the batch: ``kind`` is
    ``logit_diff``, ``logit``, ``loss`` or ``prob``; ``answers`` (and ``wrong``) one token per
    example, or one for all."""

    def __init__(self, kind: str, answers: Any, wrong: Any = None):
        self.kind = kind
        self.answers = np.asarray(answers, dtype=np.int64)
        self.wrong = None if wrong is None else np.asarray(wrong, dtype=np.int64)
        if kind == "logit_diff" and self.wrong is None:
            raise ValueError("logit_diff needs wrong answers")

    def _toylens_metric(self, batch: int) -> Tuple[str, list, Optional[list]]:
        def per_example(t: np.ndarray, what: str) -> list:
            if t.ndim == 0:
                return [int(t)] * batch
            if t.shape != (batch,):
                raise ValueError(f"{what}: {t.shape[0]} tokens for a batch of {batch}")
            return [int(x) for x in t]

        wrong = None if self.wrong is None else per_example(self.wrong, "wrong")
        return self.kind, per_example(self.answers, "answers"), wrong

    def __call__(self, logits: Any) -> Any:
        if hasattr(logits, "detach"):
            import torch

            return torch.tensor(self(logits.detach().cpu().numpy()))
        x = np.asarray(logits, dtype=np.float64)[:, -1, :]
        rows = np.arange(x.shape[0])
        a = np.broadcast_to(self.answers, (x.shape[0],))
        if self.kind == "logit_diff":
            w = np.broadcast_to(self.wrong, (x.shape[0],))
            return np.float64((x[rows, a] - x[rows, w]).mean())
        if self.kind == "logit":
            return np.float64(x[rows, a].mean())
        m = x.max(-1, keepdims=True)
        logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
        if self.kind == "loss":
            return np.float64(-logp[rows, a].mean())
        return np.float64(np.exp(logp[rows, a]).mean())

    def __repr__(self) -> str:
        return f"toylens.patching.{self.kind}({self.answers.tolist()}" + (
            f", {self.wrong.tolist()})" if self.wrong is not None else ")"
        )


def logit_diff(answers: Any, wrong: Any) -> Metric:
    """``logit[answer] − logit[wrong]`` at the last position, mean over the batch."""
    return Metric("logit_diff", answers, wrong)


def logit(answers: Any) -> Metric:
    return Metric("logit", answers)


def loss(answers: Any) -> Metric:
    """Cross-entropy of the answers at the last position."""
    return Metric("loss", answers)


def prob(answers: Any) -> Metric:
    return Metric("prob", answers)


def _tokens(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _sweep(name: str):
    def run(model: Any, corrupted_tokens: Any, clean_cache: Dict[str, Any], patching_metric: Any) -> np.ndarray:
        return _toylens._patch_sweep(model, _tokens(corrupted_tokens), clean_cache, name, patching_metric)

    run.__name__ = f"get_act_patch_{name}"
    run.__doc__ = (
        f"TransformerLens's ``get_act_patch_{name}``: the metric of the corrupted run with each "
        "index's clean activation patched in."
    )
    return run


get_act_patch_resid_pre = _sweep("resid_pre")
get_act_patch_resid_mid = _sweep("resid_mid")
get_act_patch_attn_out = _sweep("attn_out")
get_act_patch_mlp_out = _sweep("mlp_out")
get_act_patch_attn_head_out_by_pos = _sweep("attn_head_out_by_pos")
get_act_patch_attn_head_q_by_pos = _sweep("attn_head_q_by_pos")
get_act_patch_attn_head_k_by_pos = _sweep("attn_head_k_by_pos")
get_act_patch_attn_head_v_by_pos = _sweep("attn_head_v_by_pos")
get_act_patch_attn_head_pattern_by_pos = _sweep("attn_head_pattern_by_pos")
get_act_patch_attn_head_pattern_dest_src_pos = _sweep("attn_head_pattern_dest_src_pos")
get_act_patch_attn_head_out_all_pos = _sweep("attn_head_out_all_pos")
get_act_patch_attn_head_q_all_pos = _sweep("attn_head_q_all_pos")
get_act_patch_attn_head_k_all_pos = _sweep("attn_head_k_all_pos")
get_act_patch_attn_head_v_all_pos = _sweep("attn_head_v_all_pos")
get_act_patch_attn_head_pattern_all_pos = _sweep("attn_head_pattern_all_pos")

_SWEEPS = {
    ("resid_pre", ("layer", "pos")): "resid_pre",
    ("resid_mid", ("layer", "pos")): "resid_mid",
    ("attn_out", ("layer", "pos")): "attn_out",
    ("mlp_out", ("layer", "pos")): "mlp_out",
    ("z", ("layer", "pos", "head")): "attn_head_out_by_pos",
    ("q", ("layer", "pos", "head")): "attn_head_q_by_pos",
    ("k", ("layer", "pos", "head")): "attn_head_k_by_pos",
    ("v", ("layer", "pos", "head")): "attn_head_v_by_pos",
    ("pattern", ("layer", "head_index", "dest_pos")): "attn_head_pattern_by_pos",
    ("pattern", ("layer", "head_index", "dest_pos", "src_pos")): "attn_head_pattern_dest_src_pos",
    ("z", ("layer", "head")): "attn_head_out_all_pos",
    ("q", ("layer", "head")): "attn_head_q_all_pos",
    ("k", ("layer", "head")): "attn_head_k_all_pos",
    ("v", ("layer", "head")): "attn_head_v_all_pos",
    ("pattern", ("layer", "head_index")): "attn_head_pattern_all_pos",
}


def generic_activation_patch(
    model: Any,
    corrupted_tokens: Any,
    clean_cache: Dict[str, Any],
    patching_metric: Any,
    patch_setter: Any = None,
    activation_name: str = "resid_pre",
    index_axis_names: Optional[Sequence[str]] = None,
    index_df: Any = None,
    return_index_df: bool = False,
) -> np.ndarray:
    """TransformerLens's ``generic_activation_patch`` for the activations and index axes its
    ``get_act_patch_*`` functions use (``patch_setter`` is implied by them and ignored)."""
    if index_df is not None or return_index_df:
        raise NotImplementedError("index_df: give index_axis_names (the full grid) instead")
    axes = tuple("head" if a == "head_index" and activation_name != "pattern" else a for a in index_axis_names or ())
    name = _SWEEPS.get((activation_name, axes))
    if name is None:
        known = ", ".join(f"{a} over {list(x)}" for a, x in _SWEEPS)
        raise ValueError(f"no patching sweep of `{activation_name}` over {list(axes)}; toylens has: {known}")
    return _toylens._patch_sweep(model, _tokens(corrupted_tokens), clean_cache, name, patching_metric)


def get_act_patch_block_every(model: Any, corrupted_tokens: Any, clean_cache: Dict[str, Any], metric: Any) -> np.ndarray:
    """``[3, n_layers, pos]``: resid_pre, attn_out, mlp_out."""
    return np.stack(
        [
            get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric),
            get_act_patch_attn_out(model, corrupted_tokens, clean_cache, metric),
            get_act_patch_mlp_out(model, corrupted_tokens, clean_cache, metric),
        ]
    )


def get_act_patch_attn_head_all_pos_every(model: Any, corrupted_tokens: Any, clean_cache: Dict[str, Any], metric: Any) -> np.ndarray:
    """``[5, n_layers, n_heads]``: output (z), q, k, v, pattern."""
    return np.stack(
        [
            f(model, corrupted_tokens, clean_cache, metric)
            for f in (
                get_act_patch_attn_head_out_all_pos,
                get_act_patch_attn_head_q_all_pos,
                get_act_patch_attn_head_k_all_pos,
                get_act_patch_attn_head_v_all_pos,
                get_act_patch_attn_head_pattern_all_pos,
            )
        ]
    )


def get_act_patch_attn_head_by_pos_every(model: Any, corrupted_tokens: Any, clean_cache: Dict[str, Any], metric: Any) -> np.ndarray:
    """``[5, n_layers, pos, n_heads]``: output (z), q, k, v, pattern (by destination)."""
    parts = [
        f(model, corrupted_tokens, clean_cache, metric)
        for f in (
            get_act_patch_attn_head_out_by_pos,
            get_act_patch_attn_head_q_by_pos,
            get_act_patch_attn_head_k_by_pos,
            get_act_patch_attn_head_v_by_pos,
        )
    ]
    pattern = get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric)
    parts.append(np.swapaxes(pattern, 1, 2))
    return np.stack(parts)


ALL_SWEEPS = [name for name in _SWEEPS.values()]


def attribution_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    sweeps: Optional[Sequence[str]] = None,
) -> Dict[str, np.ndarray]:
    """Attribution patching: for each sweep (``get_act_patch_`` names without the prefix;
    default all the model has), ``Σ (clean − corrupted) · ∂metric/∂activation`` over what each
    index patches, the gradient on the corrupted run: the first-order estimate of ``patched −
    corrupted`` metric, from one forward and one backward pass."""
    if sweeps is None:
        attn_only = bool(model.cfg.get("attn_only"))
        sweeps = [s for s in ALL_SWEEPS if not (attn_only and s in ("resid_mid", "mlp_out"))]
    out = _toylens._attribution_patch(model, _tokens(clean_tokens), _tokens(corrupted_tokens), list(sweeps), metric)
    return dict(zip(sweeps, out))


def path_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    receiver_input: str = "q",
    sender: Optional[Tuple[int, int]] = None,
    receiver: Optional[Tuple[int, int]] = None,
    freeze_mlps: bool = False,
) -> Any:
    """Path patching: the metric of the corrupted run when only the path from ``sender``
    (layer, head) to ``receiver``'s ``receiver_input`` (``q``, ``k`` or ``v``) carries the clean
    run (every other head held at its corrupted value; MLPs recompute unless ``freeze_mlps``).
    Without sender and receiver: every pair, ``[layer_s, head_s, layer_r, head_r]`` (NaN where the
    receiver is not in a later layer)."""
    return _toylens._path_patch(
        model,
        _tokens(clean_tokens),
        _tokens(corrupted_tokens),
        receiver_input,
        metric,
        freeze_mlps,
        None if sender is None else tuple(sender),
        None if receiver is None else tuple(receiver),
    )
