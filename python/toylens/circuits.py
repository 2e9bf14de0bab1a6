"""TransformerLens's circuit-analysis surface on toylens models: ``ActivationCache`` (what
``run_with_cache`` returns: a dict with ``decompose_resid``, ``logit_attrs`` and the rest), the
weights as ``model.W_Q`` and friends, ``model.QK`` / ``model.OV`` as factored matrices,
``all_composition_scores`` and weight processing. The computing is toylens's (Rust); this module
gives it TransformerLens's arguments, slices and shapes."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _toylens
from .factored import FactoredMatrix

SliceInput = Union[None, int, Tuple[int, ...], Sequence[int], np.ndarray, slice]


class Slice:
    """TransformerLens's ``Slice``: None keeps everything, an int one index (dropping the axis), a
    tuple ``(start, stop[, step])`` a range, a list or array those indices."""

    def __init__(self, input_slice: SliceInput = None):
        if isinstance(input_slice, Slice):
            input_slice = input_slice.slice
        if isinstance(input_slice, tuple):
            input_slice = slice(*input_slice)
        elif isinstance(input_slice, (list, np.ndarray)):
            input_slice = np.asarray(input_slice)
        self.slice = input_slice

    def apply(self, x: np.ndarray, dim: int = 0) -> np.ndarray:
        if self.slice is None:
            return x
        index: List[Any] = [slice(None)] * x.ndim
        index[dim] = self.slice
        return x[tuple(index)]


def _layer(layer: Optional[int], n_layers: int) -> Optional[int]:
    if layer is None or layer == -1:
        return None
    if layer < 0:
        raise ValueError(f"layer {layer}: layers count from 0 (or -1 for the end)")
    return layer


_ALIASES = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "smeared_k": "attn.hook_smeared_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "result": "attn.hook_result",
    "attn_scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "attn": "attn.hook_pattern",
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's ``utils.get_act_name`` for the hook points toylens has:
    ``("resid_pre", 0)`` is ``blocks.0.hook_resid_pre``, ``("scale", 1, "ln2")``
    ``blocks.1.ln2.hook_scale``, ``"scale"`` alone ``ln_final.hook_scale``."""
    if "." in name or name.startswith("hook_"):
        return name
    if name in ("scale", "normalized"):
        if layer is None:
            return f"ln_final.hook_{name}"
        return f"blocks.{layer}.{layer_type or 'ln1'}.hook_{name}"
    if name in ("embed", "pos_embed"):
        return _ALIASES[name]
    if name not in _ALIASES:
        raise KeyError(f"no activation called `{name}`; known: {', '.join(sorted(_ALIASES))}")
    if layer is None:
        raise KeyError(f"`{name}` needs a layer")
    return f"blocks.{layer}.{_ALIASES[name]}"


class ActivationCache(dict):
    """Activations by hook name (a dict, as before), with TransformerLens's ``ActivationCache``
    methods. Stacks are ``[components, batch, pos, d_model]`` and sum to what they decompose."""

    def __init__(self, cache_dict: Any, model: Any, has_batch_dim: bool = True):
        super().__init__(cache_dict)
        self.model = model
        self.has_batch_dim = has_batch_dim

    @property
    def cache_dict(self) -> "ActivationCache":
        return self

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            key = get_act_name(*key)
        elif isinstance(key, str) and key not in self and "." not in key:
            key = get_act_name(key)
        return super().__getitem__(key)

    def _n_layers(self) -> int:
        return int(self.model.cfg["n_layers"])

    def _resid(self, what: str, layer: Optional[int], **flags: Any) -> Tuple[np.ndarray, List[str]]:
        return _toylens._resid(self.model, self, what, _layer(layer, self._n_layers()), **flags)

    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        stack, labels = self._resid(
            "accumulated", layer, incl_mid=incl_mid, apply_ln=apply_ln, mlp_input=mlp_input
        )
        stack = Slice(pos_slice).apply(stack, -2)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        stack, labels = self._resid(
            "decompose",
            layer,
            mlp_input=mlp_input,
            mode=mode,
            apply_ln=apply_ln,
            incl_embeds=incl_embeds,
        )
        stack = Slice(pos_slice).apply(stack, -2)
        return (stack, labels) if return_labels else stack

    def compute_head_results(self) -> None:
        """Adds ``blocks.L.attn.hook_result`` ``[batch, pos, head, d_model]``: each head's output."""
        stack, _ = self._resid("heads", None)
        n_h = int(self.model.cfg["n_heads"])
        for layer in range(self._n_layers()):
            part = stack[layer * n_h : (layer + 1) * n_h]
            dict.__setitem__(self, f"blocks.{layer}.attn.hook_result", np.moveaxis(part, 0, 2))

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceInput = None,
        apply_ln: bool = False,
    ) -> Any:
        stack, labels = self._resid(
            "heads", layer, incl_remainder=incl_remainder, apply_ln=apply_ln
        )
        stack = Slice(pos_slice).apply(stack, -2)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: Optional[str] = None) -> np.ndarray:
        n = self._n_layers() if layer in (None, -1) else layer
        return np.stack([self[get_act_name(activation_name, l, sublayer_type)] for l in range(n)])

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: SliceInput = None,
        pos_slice: SliceInput = None,
        project_output_onto: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        acts = Slice(pos_slice).apply(self[f"blocks.{layer}.mlp.hook_post"], -2)
        w_out = self.model.weight(f"blocks.{layer}.mlp.W_out")
        acts = Slice(neuron_slice).apply(acts, -1)
        w_out = Slice(neuron_slice).apply(w_out, 0)
        if project_output_onto is None:
            return acts[..., None] * w_out
        projected = w_out @ np.asarray(project_output_onto)
        return acts * projected if projected.ndim == 1 else acts[..., None] * projected

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceInput = None,
        neuron_slice: SliceInput = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Optional[np.ndarray] = None,
    ) -> Any:
        stack, labels = self._resid(
            "neurons", layer, incl_remainder=incl_remainder, apply_ln=apply_ln
        )
        if neuron_slice is not None:
            d_mlp = int(self.model.cfg["d_mlp"])
            n_layers = len(labels) // d_mlp if not incl_remainder else (len(labels) - 1) // d_mlp
            keep = Slice(neuron_slice).apply(np.arange(d_mlp), 0)
            keep = np.atleast_1d(keep)
            rows = [l * d_mlp + n for l in range(n_layers) for n in keep]
            if incl_remainder:
                rest = stack[-1] + stack[: n_layers * d_mlp].sum(0) - stack[rows].sum(0)
                stack = np.concatenate([stack[rows], rest[None]])
                labels = [labels[r] for r in rows] + ["remainder"]
            else:
                stack, labels = stack[rows], [labels[r] for r in rows]
        stack = Slice(pos_slice).apply(stack, -2)
        if project_output_onto is not None:
            stack = _project(stack, project_output_onto)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: np.ndarray,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: SliceInput = None,
        batch_slice: SliceInput = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> np.ndarray:
        """The LayerNorm reading the residual at ``layer``, frozen at its cached scale: each
        component centred and divided by it (gain and bias not applied)."""
        residual_stack = np.asarray(residual_stack)
        if has_batch_dim:
            residual_stack = Slice(batch_slice).apply(residual_stack, 1)
        if self.model.cfg.get("normalization_type") is None:
            return residual_stack
        n = self._n_layers()
        layer = n if layer in (None, -1) else layer
        if recompute_ln and layer == n:
            return _layer_norm(residual_stack, self.model, float(self.model.cfg.get("eps", 1e-5)))
        residual_stack = residual_stack - residual_stack.mean(-1, keepdims=True)
        if layer == n:
            key = "ln_final.hook_scale"
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        scale = Slice(pos_slice).apply(self[key], -2)
        if has_batch_dim:
            scale = Slice(batch_slice).apply(scale, 0)
        return residual_stack / scale

    def get_full_resid_decomposition(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        return_labels: bool = False,
        project_output_onto: Optional[np.ndarray] = None,
    ) -> Any:
        stack, labels = self._resid(
            "full",
            layer,
            mlp_input=mlp_input,
            expand_neurons=expand_neurons,
            apply_ln=apply_ln,
        )
        stack = Slice(pos_slice).apply(stack, -2)
        if project_output_onto is not None:
            stack = _project(stack, project_output_onto)
        return (stack, labels) if return_labels else stack

    def logit_attrs(
        self,
        residual_stack: np.ndarray,
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: SliceInput = None,
        batch_slice: SliceInput = None,
        has_batch_dim: bool = True,
    ) -> np.ndarray:
        """Each component's direct contribution to the logit of ``tokens`` (minus that of
        ``incorrect_tokens``), through the final LayerNorm frozen at its cached scale."""
        directions = tokens_to_residual_directions(self.model, tokens)
        if incorrect_tokens is not None:
            if np.shape(tokens) != np.shape(incorrect_tokens):
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape! "
                    f"(tokens.shape={np.shape(tokens)}, incorrect_tokens.shape={np.shape(incorrect_tokens)})"
                )
            directions = directions - tokens_to_residual_directions(self.model, incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack,
            layer=-1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        return (scaled * directions).sum(-1)


def _project(stack: np.ndarray, onto: Any) -> np.ndarray:
    onto = np.asarray(onto, dtype=np.float32)
    out = stack @ (onto if onto.ndim == 2 else onto[:, None])
    return out if onto.ndim == 2 else out[..., 0]


def _layer_norm(x: np.ndarray, model: Any, eps: float) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    scale = np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x / scale * model.weight("ln_final.w") + model.weight("ln_final.b")


def tokens_to_residual_directions(model: Any, tokens: Any) -> np.ndarray:
    """The unembedding's column of each token: ``[d_model]``, ``[pos, d_model]`` or ``[batch,
    pos, d_model]`` as ``tokens`` is a token, a list or a batch."""
    t = np.asarray(tokens)
    if t.dtype.kind not in "iu":
        raise TypeError("toylens models have no tokenizer: give token ids")
    w_u = model.weight("unembed.W_U")
    v = w_u.shape[1]
    if t.size and (t.min() < 0 or t.max() >= v):
        raise ValueError(f"token {int(t.max())} is outside the output vocabulary (d_vocab_out = {v})")
    return np.moveaxis(w_u[:, t], 0, -1)


# ---------------------------------------------------------------------------------------------
# The model's TransformerLens attributes.

_WEIGHTS = {
    "W_E": "embed.W_E",
    "W_pos": "pos_embed.W_pos",
    "W_U": "unembed.W_U",
    "b_U": "unembed.b_U",
    "W_Q": "attn.W_Q",
    "W_K": "attn.W_K",
    "W_V": "attn.W_V",
    "W_O": "attn.W_O",
    "b_Q": "attn.b_Q",
    "b_K": "attn.b_K",
    "b_V": "attn.b_V",
    "b_O": "attn.b_O",
    "W_in": "mlp.W_in",
    "b_in": "mlp.b_in",
    "W_out": "mlp.W_out",
    "b_out": "mlp.b_out",
}


def _weight_property(name: str) -> property:
    return property(lambda self: self.weight(name), doc=f"`{name}` (stacked over layers: [n_layers, ...])")


def _qk(self: Any) -> FactoredMatrix:
    """Every head's QK circuit ``W_Q W_Kᵀ`` ``[n_layers, n_heads, d_model, d_model]``."""
    return FactoredMatrix(self.W_Q, np.swapaxes(self.W_K, -1, -2))


def _ov(self: Any) -> FactoredMatrix:
    """Every head's OV circuit ``W_V W_O`` ``[n_layers, n_heads, d_model, d_model]``."""
    return FactoredMatrix(self.W_V, self.W_O)


def all_composition_scores(self: Any, mode: str) -> np.ndarray:
    """Q-, K- or V-composition scores ``[n_layers, n_heads, n_layers, n_heads]`` of every pair of
    heads in different layers (zero unless the first is earlier)."""
    return _toylens._composition_scores(self, mode)


def accumulated_bias(self: Any, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> np.ndarray:
    return _toylens._accumulated_bias(self, layer, mlp_input, include_mlp_biases)


def copying_scores(model: Any) -> List[dict]:
    """Every head's copying scores: ``score`` (Re(Σλ)/Σ|λ| over the eigenvalues of the full OV
    circuit W_E·W_OV·W_U), ``positive_share`` (the share of those with a positive real part),
    ``ov_score`` (the same ratio over ``model.OV``'s eigenvalues, TransformerLens's demo's
    ``OV_copying_score``) and ``top1`` (the share of tokens whose full-OV row peaks on itself)."""
    return _toylens._copying_scores(model)


def process_weights(
    self: Any,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> Any:
    """A copy of the model with TransformerLens's weight processing (its ``from_pretrained``
    defaults): the same function, LayerNorms left with unit gain and zero bias. Unlike
    TransformerLens's ``process_weights_`` it returns a new model."""
    return _toylens._process_weights(self, fold_ln, center_writing_weights, center_unembed, fold_value_biases)


def _install() -> None:
    model = _toylens.Model
    for attr, name in _WEIGHTS.items():
        setattr(model, attr, _weight_property(name))
    model.QK = property(_qk)
    model.OV = property(_ov)
    model.all_composition_scores = all_composition_scores
    model.accumulated_bias = accumulated_bias
    model.tokens_to_residual_directions = tokens_to_residual_directions
    model.process_weights = process_weights
    raw = model.run_with_cache
    if getattr(raw, "_wrapped", False):
        return

    def run_with_cache(self: Any, input: Any, names_filter: Any = None) -> Tuple[np.ndarray, ActivationCache]:
        logits, cache = raw(self, input, names_filter)
        return logits, ActivationCache(cache, self)

    run_with_cache.__doc__ = raw.__doc__
    run_with_cache._wrapped = True  # type: ignore[attr-defined]
    model.run_with_cache = run_with_cache


_install()
