"""A toylens transformer inside TransformerLens, with its weights loaded under ``strict=True``:
a ``HookedTransformer`` on TransformerLens 3.x, a ``TransformerBridge`` on 4.x (which removed
``HookedTransformer``)."""

from __future__ import annotations

from typing import Any, Dict

# toylens config fields that TransformerLens has no field for.
TOYLENS_ONLY = {"init", "attn_bias", "unembed_bias", "initializer_range"}


def _import():
    try:
        import torch
        import transformer_lens
    except ImportError as e:
        raise ImportError(
            "to_transformer_lens needs transformer-lens (and torch): "
            "pip install 'transformer-lens>=3.9'"
        ) from e
    return torch, transformer_lens


def has_hooked_transformer(tl: Any) -> bool:
    """3.x has it; on 4.x the name raises ImportError (not AttributeError)."""
    try:
        tl.HookedTransformer
    except (AttributeError, ImportError):
        return False
    return True


def tl_config(model: Any) -> Dict[str, Any]:
    """The model's config as TransformerLens's fields."""
    return {k: v for k, v in model.cfg.items() if k not in TOYLENS_ONLY}


def to_transformer_lens(model: Any) -> Any:
    if model.arch != "transformer":
        raise TypeError(
            f"only transformers have a TransformerLens counterpart; this model is a `{model.arch}`"
        )
    if model.cfg.get("smear_keys"):
        raise ValueError(
            "this model has smeared keys (model.smear_keys, toylens's own option: "
            "blocks.L.attn.smear_alpha): no TransformerLens version has them, so it cannot be "
            "exported; toylens's own run_with_cache, hooks and analyses take it"
        )
    if model.cfg.get("vector_tokens"):
        raise ValueError(
            "this model reads vectors (model.vector_tokens, toylens's own option: x·W_E in, "
            "real outputs): TransformerLens's models read token ids, so it cannot be exported; "
            "toylens's own run_with_cache, hooks and analyses take it"
        )
    torch, tl = _import()
    cfg = tl_config(model)
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    if has_hooked_transformer(tl):
        import warnings

        with warnings.catch_warnings():
            # 3.x's notice that HookedTransformer goes in 4.0: on 4.x we use the bridge.
            warnings.simplefilter("ignore", DeprecationWarning)
            tl_model = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
        # Rotary models: TransformerLens keeps its sin/cos tables as buffers in the state dict;
        # toylens computes its own from the config and saves none.
        for k, v in tl_model.state_dict().items():
            if k.endswith((".rotary_sin", ".rotary_cos")):
                state.setdefault(k, v)
        tl_model.load_state_dict(state, strict=True)
        return tl_model.eval()
    if cfg.get("positional_embedding_type") == "rotary" and not cfg.get("rotary_adjacent_pairs"):
        raise ValueError(
            "TransformerLens 4.x's native model rotates adjacent pairs (GPT-J/Llama) only; this "
            "model rotates halves (GPT-NeoX, rotary_adjacent_pairs false): load it with "
            "TransformerLens 3.9, or train with model.rotary_adjacent_pairs=true"
        )
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    bcfg = TransformerBridgeConfig(**cfg)
    bridge = TransformerBridge.boot_native(bcfg)
    bridge.load_state_dict(convert_tl_checkpoint(state, bcfg), strict=True)
    return bridge.eval()
