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
    torch, tl = _import()
    cfg = tl_config(model)
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    if has_hooked_transformer(tl):
        import warnings

        with warnings.catch_warnings():
            # 3.x's notice that HookedTransformer goes in 4.0: on 4.x we use the bridge.
            warnings.simplefilter("ignore", DeprecationWarning)
            tl_model = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
        tl_model.load_state_dict(state, strict=True)
        return tl_model.eval()
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    bcfg = TransformerBridgeConfig(**cfg)
    bridge = TransformerBridge.boot_native(bcfg)
    bridge.load_state_dict(convert_tl_checkpoint(state, bcfg), strict=True)
    return bridge.eval()
