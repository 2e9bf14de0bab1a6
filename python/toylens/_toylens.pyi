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
        ``unembed.hook_in`` with the last ``hook_resid_post`` when there is no final LayerNorm.
        The cache is a ``toylens.ActivationCache`` (a dict with TransformerLens's methods)."""
    def weight(self, name: str) -> np.ndarray:
        """A state-dict tensor, or ``attn.W_Q`` (say) stacked over the blocks ``[n_layers, ...]``.
        ``model.W_Q``, ``model.QK``, ``model.OV``, ``all_composition_scores`` and
        ``process_weights`` are attached by ``toylens.circuits``."""
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
def _spikes(
    run: str, column: Optional[str] = None, ratio: Optional[float] = None, window: Optional[int] = None
) -> Dict[str, Any]: ...
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
def _resid(
    model: Model,
    cache: Dict[str, np.ndarray],
    what: str,
    layer: Optional[int],
    mlp_input: bool = False,
    apply_ln: bool = False,
    incl_mid: bool = False,
    mode: str = "all",
    incl_embeds: bool = True,
    incl_remainder: bool = False,
    expand_neurons: bool = True,
) -> Tuple[np.ndarray, List[str]]: ...
def _accumulated_bias(model: Model, layer: int, mlp_input: bool, include_mlp_biases: bool) -> np.ndarray: ...
def _composition_scores(model: Model, mode: str) -> np.ndarray: ...
def _copying_scores(model: Model) -> List[Dict[str, Any]]: ...
def _process_weights(
    model: Model, fold_ln: bool, center_writing_weights: bool, center_unembed: bool, fold_value_biases: bool
) -> Model: ...
def _patch_sweep(
    model: Model, corrupted: Any, clean_cache: Dict[str, np.ndarray], sweep: str, metric: Any
) -> np.ndarray: ...
def _attribution_patch(
    model: Model, clean: Any, corrupted: Any, sweeps: List[str], metric: Any
) -> List[np.ndarray]: ...
def _path_patch(
    model: Model,
    clean: Any,
    corrupted: Any,
    receiver_input: str,
    metric: Any,
    freeze_mlps: bool,
    sender: Optional[Tuple[int, int]] = None,
    receiver: Optional[Tuple[int, int]] = None,
) -> Any: ...
def _detect_head(
    model: Model,
    tokens: Any,
    pattern: Any,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: str,
    cache: Optional[Dict[str, np.ndarray]] = None,
) -> np.ndarray: ...
def _detector_tokens(n_ctx: int, d_vocab: int) -> np.ndarray: ...
def _rust_run_with_cache_seconds(model: Model, input: _Input, repeats: int) -> List[float]: ...
def _panic_for_test() -> None: ...
