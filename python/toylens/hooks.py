"""Hooks that run inside Rust, for ``run_with_hooks`` (no Python call per forward pass):

    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", toylens.hooks.zero)])

``zero``: zero ablation; ``mean``: every example gets the batch mean; ``replace(array)``: the
activation becomes `array` (same shape, or one that broadcasts to it)."""

from ._toylens import RustHook, _mean_hook, _zero_hook, replace

zero: RustHook = _zero_hook()
mean: RustHook = _mean_hook()

__all__ = ["RustHook", "mean", "replace", "zero"]
