# Types of the native module (python/src/*.rs). The public functions are re-exported and wrapped
# by toylens/__init__.py; the underscored ones are its internals.
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__version__: str

_Input = Union[np.ndarray, Sequence[Any]]
_NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
_Hook = Callable[[np.ndarray, str], Optional[np.ndarray]]

class Model:
    """A model loaded from a checkpoint (any toylens kind, or an original grokking ``.pth``)."""

    @property
    def arch(self) -> str:
        """``transformer``, ``toy_mlp``, ``superposition`` or ``linear``."""
    @property
    def cfg(self) -> Dict[str, Any]:
        """The model config as checkpoints record it (TransformerLens's field names)."""
    @property
    def path(self) -> os.PathLike[str]: ...
    @property
    def task(self) -> Optional[Dict[str, Any]]:
        """The task the checkpoint records, e.g. ``{"name": "modular", "p": 113, ...}``."""
    @property
    def hook_names(self) -> List[str]:
        """Hook points in forward order (TransformerLens's names for the transformer)."""
    @property
    def n_params(self) -> int: ...
    def state_dict(self) -> Dict[str, np.ndarray]:
        """Parameters and buffers under the checkpoint's names (copies)."""
    def __call__(self, input: _Input) -> np.ndarray:
        """Logits ``[batch, pos, d_vocab_out]`` (transformer) of integer tokens ``[batch, pos]``
        or, for dense models, the output of float inputs ``[batch, features]``; 1-D: one
        example."""
    def run_with_cache(
        self, input: _Input, names_filter: _NamesFilter = None
    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """``(logits, cache)``; the cache maps hook names to arrays in TransformerLens's shapes.
        As in TransformerLens, ``unembed.hook_out`` shares its memory with the logits, and
        ``unembed.hook_in`` with the last ``hook_resid_post`` when there is no final LayerNorm."""
    def run_with_hooks(
        self, input: _Input, fwd_hooks: Optional[Sequence[Tuple[str, _Hook]]] = None
    ) -> np.ndarray:
        """Logits with hooks: ``fn(activation, hook)`` returns a replacement or None (after
        changing the array in place, or only reading it). ``hook`` is the hook's name, a
        ``str`` that also has ``.name``."""
    def to_transformer_lens(self) -> Any:
        """A HookedTransformer (TransformerLens 3.x) or TransformerBridge (4.x) with these
        weights, loaded with ``strict=True``."""

def load(path: Union[str, os.PathLike[str]]) -> Model:
    """A toylens safetensors checkpoint of any kind, or an original grokking ``.pth``."""

def presets() -> List[str]: ...
def set_num_threads(threads: int) -> int:
    """Size toylens's thread pool before its first use; returns the size in force."""

def get_num_threads() -> int: ...
def empty_cache() -> int:
    """Give back the large freed blocks toylens keeps for reuse; returns the bytes."""

def _reused_blocks() -> int: ...
def _train(
    preset: Optional[str],
    overrides: List[str],
    out: Optional[str],
    resume: Optional[str],
    force: bool,
    progress: bool,
) -> str: ...
def _run_info(
    dir: str,
) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any], Dict[str, np.ndarray], List[int]]: ...
def _config(preset: str, overrides: List[str]) -> Dict[str, Any]: ...
def _sweep(
    preset: Optional[str],
    args: List[str],
    out: Optional[str],
    jobs: Optional[int],
    yes: bool,
    resume: Optional[str],
    worker: str,
    progress: bool,
) -> Tuple[str, List[Tuple[int, str]]]: ...
def _sweep_task(dir: str, id: int) -> str: ...
def _sweep_table(dir: str) -> Dict[str, Any]: ...
def _is_sweep(dir: str) -> bool: ...
def _analyze(target: Any, keys: str) -> Dict[str, Any]: ...
def _ablate(target: Any) -> Dict[str, Any]: ...
def _eval(target: Any) -> Dict[str, Any]: ...
def _llc(
    target: Any,
    lr: float,
    localization: float,
    nbeta: Union[str, float],
    chains: int,
    draws: int,
    burnin: int,
    steps_between_draws: int,
    batch_size: Optional[int],
    seed: int,
    init_loss: str,
) -> Dict[str, Any]: ...
def _prune(
    target: Any, sparsity: float, scope: str, method: str, tensors: List[str], seed: int
) -> Tuple[Dict[str, np.ndarray], List[Dict[str, Any]]]: ...
def _ticket(
    run_dir: str,
    out: str,
    sparsity: float,
    rewind: int,
    source: Optional[int],
    rounds: int,
    scope: str,
    method: str,
    seed: int,
    overrides: List[str],
    control: Optional[str],
    progress: bool,
) -> Dict[str, Any]: ...
def _rust_run_with_cache_seconds(model: Model, input: _Input, repeats: int) -> List[float]: ...
def _panic_for_test() -> None: ...
