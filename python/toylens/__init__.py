"""toylens from Python: train, load, run with hooks and caches, and analyse small models, with
arrays as numpy and TransformerLens's names, shapes and calls.

    import toylens
    run = toylens.train("grokking-tiny", {"optim.weight_decay": 0.5})
    model = run.load()                      # final weights; run.load(step=1000) for a checkpoint
    logits, cache = model.run_with_cache(tokens)
    cache["blocks.0.attn.hook_pattern"]     # numpy, [batch, head, query, key]
    tl_model = model.to_transformer_lens()  # the same weights inside TransformerLens

The work runs in Rust (the toylens library) with the GIL released, on toylens's own thread pool
(``set_num_threads`` before the first call to size it).
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _toylens, head_detector, hooks, patching
from ._toylens import Model, empty_cache, get_num_threads, load, presets, set_num_threads
from .circuits import ActivationCache, get_act_name
from .factored import FactoredMatrix

__version__ = _toylens.__version__

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "Model",
    "Run",
    "Sweep",
    "ablate",
    "analyze",
    "config",
    "empty_cache",
    "evaluate",
    "get_act_name",
    "get_num_threads",
    "head_detector",
    "hooks",
    "llc",
    "llc_sets",
    "named_set",
    "load",
    "patching",
    "presets",
    "prune",
    "set_num_threads",
    "sweep",
    "ticket",
    "train",
]

PathLike = Union[str, "os.PathLike[str]"]
Overrides = Union[None, Sequence[str], Mapping[str, Any]]


def _value(v: Any) -> str:
    """An override's value as the command line would spell it (YAML)."""
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def _overrides(overrides: Overrides) -> List[str]:
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{k}={_value(v)}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def _arrays(x: Any) -> Any:
    """Numeric lists (and rectangular lists of them) as numpy arrays, recursively."""
    if isinstance(x, dict):
        return {k: _arrays(v) for k, v in x.items()}
    if isinstance(x, list):
        if x and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in x):
            return np.asarray(x)
        items = [_arrays(e) for e in x]
        if (
            items
            and all(isinstance(e, np.ndarray) for e in items)
            and len({e.shape for e in items}) == 1
        ):
            return np.stack(items)
        return items
    return x


def _path(target: Any) -> Any:
    return target.dir if isinstance(target, (Run, Sweep)) else target


class Run:
    """A run directory: its summary, config, metric columns (numpy) and checkpoints."""

    def __init__(self, dir: PathLike):
        self.dir = pathlib.Path(dir)
        self.refresh()

    def refresh(self) -> "Run":
        """Read the directory again (a run still training elsewhere, say)."""
        summary, config, metrics, steps = _toylens._run_info(str(self.dir))
        self.summary: Optional[Dict[str, Any]] = summary
        self.config: Dict[str, Any] = config
        self.metrics: Dict[str, np.ndarray] = metrics
        self.steps: List[int] = steps
        return self

    @property
    def checkpoints(self) -> List[pathlib.Path]:
        """Every checkpoint, oldest first (`steps` gives their steps)."""
        return [self.dir / "checkpoints" / f"step_{s:06}.safetensors" for s in self.steps]

    def load(self, step: Optional[int] = None) -> Model:
        """The final weights, or those of the checkpoint at `step`."""
        if step is None:
            return load(str(self.dir / "final.safetensors"))
        if step not in self.steps:
            raise KeyError(f"{self.dir} has no checkpoint of step {step}; it has {self.steps}")
        return load(str(self.checkpoints[self.steps.index(step)]))

    @property
    def trace(self) -> Optional[Dict[str, Any]]:
        """The optimizer trace (`trace.npy`; None where the run has none): `step`, `loss` (each
        traced step's batch) and `lr` of shape [records], and per tensor (`tensors` names them)
        `grad_norm`, `update_norm`, `weight_norm`, `eps_share` and `max_update_ratio` of shape
        [records, tensors]."""
        info_path = self.dir / "trace.json"
        if not info_path.exists():
            return None
        import json

        info = json.loads(info_path.read_text())
        records = np.load(self.dir / "trace.npy")
        out: Dict[str, Any] = {"tensors": info["tensors"], "every": info["every"]}
        for name in records.dtype.names:
            out[name] = np.ascontiguousarray(records[name])
        return out

    def spikes(self, column: Optional[str] = None, ratio: Optional[float] = None,
               window: Optional[int] = None) -> Dict[str, Any]:
        """`toylens spikes`: the run's loss spikes by its `train.spikes` rule (or these parts of
        it changed) and, per spike, the tensors whose gradient and update norms rose first, Adam's
        ε regime, and the loss columns that carried the extra loss. Writes no file."""
        return _toylens._spikes(str(self.dir), column, ratio, window)

    def __repr__(self) -> str:
        done = "finished" if self.summary is not None else "unfinished"
        return f"toylens.Run({str(self.dir)!r}, {done}, {len(self.steps)} checkpoints)"


Arrays = Union[Sequence[Any], Mapping[str, Any]]


def _data_arrays(name: str, value: Arrays) -> Dict[str, np.ndarray]:
    if isinstance(value, Mapping):
        pair = {k: value[k] for k in ("inputs", "targets") if k in value}
    else:
        pair = dict(zip(("inputs", "targets"), value))
    if len(pair) != 2:
        raise ValueError(f"{name}: give (inputs, targets) or {{'inputs': ..., 'targets': ...}}")
    return {k: np.ascontiguousarray(v) for k, v in pair.items()}


def train(
    preset: Optional[str] = "grokking",
    overrides: Overrides = None,
    out: Optional[PathLike] = None,
    progress: bool = True,
    resume: Optional[PathLike] = None,
    force: bool = False,
    data: Optional[Arrays] = None,
    test: Optional[Arrays] = None,
) -> Run:
    """Train as ``toylens train PRESET OVERRIDES --out OUT`` does: the same config, files and bits.

    preset: a preset's name or a YAML config file (``"reversal.yaml"``).
    data, test: your own data as numpy arrays, ``(inputs, targets)`` (see the `files` task:
    integer tokens ``[n, pos]`` with one label per example ``[n]`` or per-position targets
    ``[n, pos]``, -1 where no loss is taken; or real inputs and targets). The config must have
    ``data.task: files``; the arrays are written into ``OUT/data/`` (so the run can be resumed,
    analysed and reproduced from the command line) and replace its ``data.train``/``data.test``.
    Without ``test``, ``data.test_fraction`` of ``data`` is held out. Bad arrays raise ValueError
    naming the array and the first bad index, and nothing is written.

    overrides: ``["optim.weight_decay=0.5"]`` or ``{"optim.weight_decay": 0.5}``.
    out: the run directory (default ``runs/<preset>-<date>-<time>``); it must be empty unless
    ``force`` (which deletes what it holds).
    resume: a run directory to continue (then ``preset`` must be None; overrides may change
    ``train.*`` only, e.g. ``{"train.steps": 40000}``).
    progress: progress lines on ``sys.stderr``.

    Ctrl-C stops the run at the end of the step it is in, saves a checkpoint there and raises
    KeyboardInterrupt; ``train(None, resume=dir)`` then continues to exactly the same weights.
    """
    if resume is not None and preset == "grokking":
        preset = None
    overrides = _overrides(overrides)
    if data is not None:
        if resume is not None:
            raise ValueError("resume continues a run on the data it holds: drop `data`")
        overrides = _place_arrays(preset or "grokking", overrides, out, force, data, test)
        force = False
    d = _toylens._train(
        preset,
        overrides,
        None if out is None else os.fspath(out),
        None if resume is None else os.fspath(resume),
        force,
        progress,
    )
    return Run(d)


def _place_arrays(preset, overrides, out, force, data, test) -> List[str]:
    """Write the arrays into OUT/data/ once the config with them resolves; the overrides naming
    them."""
    import shutil
    import tempfile

    if out is None:
        raise ValueError("train(data=...) needs `out`: the arrays are kept in the run directory")
    out = pathlib.Path(out).absolute()
    sets = {"train": _data_arrays("data", data)}
    if test is not None:
        sets["test"] = _data_arrays("test", test)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-data-", dir=out.parent))
    try:
        for name, arrays in sets.items():
            np.savez(staged / f"{name}.npz", **arrays)
        at = lambda d: [f"data.{n}={d / (n + '.npz')}" for n in sets]  # noqa: E731
        _toylens._config(preset, overrides + at(staged))  # every check, before anything is kept
        if out.exists() and any(out.iterdir()):
            if not force:
                raise ValueError(
                    f"{out}: the run directory exists and is not empty; use resume= to continue "
                    "it or force=True to overwrite it"
                )
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(staged), os.fspath(out / "data"))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return overrides + at(out / "data")


def config(preset: str = "grokking", overrides: Overrides = None) -> Dict[str, Any]:
    """The resolved config of a preset with overrides (``toylens config``)."""
    return _toylens._config(preset, _overrides(overrides))


def analyze(target: Any, keys: str = "wl") -> Dict[str, Any]:
    """``toylens analyze`` as data, writing no file. `target`: a run (or its directory) or a
    checkpoint (path or Model). What comes back depends on the model (``result["kind"]``):

    - ``modular``: a modular-arithmetic transformer checkpoint: its Fourier analysis (key
      frequencies, restricted and excluded losses...) and its neurons' frequencies;
    - ``modular_run``: the progress measures at every checkpoint, and the grokking phases;
    - ``digits`` / ``digits_run``: per-digit statistics, attention and ablation of a digit adder;
    - ``superposition``: each instance's geometry;
    - ``generic``: any other task (your own data, regression): ``report`` is what
      ``toylens analyze --json`` prints (loss per loss position on both sets, each head's mean
      attention, tensor norms); for a run, of its last checkpoint.

    keys: how key frequencies are chosen: ``wl`` (the paper's, from W_L) or ``neurons``.
    """
    return _arrays(_toylens._analyze(_path(target), keys))


def ablate(target: Any) -> Dict[str, Any]:
    """``toylens ablate`` as data, the report ``toylens ablate --json`` prints: ``loss`` and
    ``accuracy`` intact, and ``ablations``, a row per neuron and head (zero- and mean-ablated),
    most damaging first."""
    return _arrays(_toylens._ablate(_path(target)))


def evaluate(target: Any) -> Dict[str, Any]:
    """``toylens eval``: loss and accuracy of a modular-arithmetic checkpoint on all pairs, and on
    its train and test sets when the split is known; of a run's checkpoint on any other task, on
    its train and test sets."""
    return _toylens._eval(_path(target))


def llc(
    target: Any,
    lr: float = 1e-4,
    localization: float = 100.0,
    nbeta: Union[str, float] = "batch",
    chains: int = 4,
    draws: int = 200,
    burnin: int = 100,
    steps_between_draws: int = 1,
    batch_size: Optional[int] = None,
    seed: int = 0,
    init_loss: str = "full",
    restrict: Iterable[str] = (),
    per_head: bool = False,
    mask: Any = None,
    sampler: str = "sgld",
    rmsprop_alpha: float = 0.99,
    rmsprop_eps: float = 0.1,
    diffusion: float = 0.01,
    sample_on: Optional[str] = None,
    observe: Iterable[str] = (),
    observe_examples: Optional[int] = None,
    at_steps: Iterable[int] = (),
) -> Dict[str, Any]:
    """The local learning coefficient λ̂ by SGLD (``toylens llc``, devinterp's estimator), of one
    checkpoint (``kind`` ``checkpoint``: ``estimate`` with ``llc_mean``, ``llc_std``, the chains'
    loss traces...) or of every checkpoint of a run (``kind`` ``run``: ``steps`` and
    ``estimates``). nbeta: ``"batch"`` (m / ln m, devinterp's default), ``"dataset"`` or a number.
    batch_size: None for 512, or the whole training set where that is smaller (the estimate's
    ``warnings`` then say so). restrict: sample only these components (names, ``*`` patterns,
    ``blocks.L.attn.head.H``), the weight-restricted LLC; per_head: every head's (``kind``
    ``heads``: ``steps``, ``heads`` and ``estimates[checkpoint][head]``); mask: a pruning mask
    file whose dead weights stay zero (default: a run directory's own ``mask.safetensors``).
    sampler: ``"sgld"``, ``"rmsprop-sgld"`` (rmsprop_alpha, rmsprop_eps) or ``"sgnht"``
    (diffusion; devinterp's SGNHT has no localization: pass ``localization=0`` to match it); each
    chain's ``norms`` hold every step's norms of the update's terms. sample_on: a named set of the
    task to sample on instead of the training set; observe: named sets whose loss is recorded at
    every draw, giving ``estimate["observed"]`` (one λ̂ per set; ``llc_sets`` lists them).
    at_steps: for a run, only the checkpoints at these steps (default every one).
    """
    return _arrays(
        _toylens._llc(
            _path(target), lr, localization, nbeta, chains, draws, burnin,
            steps_between_draws, batch_size, seed, init_loss,
            [restrict] if isinstance(restrict, str) else list(restrict), per_head,
            None if mask is None else _path(mask), sampler, rmsprop_alpha, rmsprop_eps,
            diffusion, sample_on, [observe] if isinstance(observe, str) else list(observe),
            observe_examples, list(at_steps),
        )
    )


def llc_sets(target: Any) -> List[Tuple[str, str]]:
    """The named sets of a checkpoint's (or run's) task that ``llc(sample_on=, observe=)`` can
    name, each with what it holds: ``train`` and ``test``, and the task's own (``test_d{place}``
    for the digit adders, ``test_first`` and ``test_repeat`` for in-context tasks)."""
    return [tuple(s) for s in _toylens._llc_sets(_path(target))]


def named_set(target: Any, name: str) -> Dict[str, Any]:
    """One of ``llc_sets``'s named sets as toylens builds it: for token tasks ``tokens``
    [examples, context], ``loss_pos``, ``targets`` [examples, loss positions] (the answer at each)
    and ``positions`` (the positions that count, or None for all); for vector sequences (in-context
    regression) ``x`` [examples, context, width], ``loss_pos`` and ``y`` [examples, loss positions,
    outputs]; for dense tasks ``x`` and ``y``.
    The same examples ``llc`` samples on or observes, to hand to another tool."""
    return _toylens._named_set(_path(target), name)


def prune(
    target: Any,
    sparsity: float,
    scope: str = "global",
    method: str = "magnitude",
    tensors: Iterable[str] = (),
    seed: int = 0,
) -> Dict[str, Any]:
    """A pruning mask of a checkpoint (``toylens prune`` without the file): ``mask`` maps tensor
    names to boolean arrays (True: kept), ``counts`` lists the live weights per tensor."""
    mask, counts = _toylens._prune(_path(target), sparsity, scope, method, list(tensors), seed)
    return {"mask": mask, "counts": counts}


def ticket(
    run: Any,
    out: PathLike,
    sparsity: float,
    rewind: int = 0,
    source: Optional[int] = None,
    rounds: int = 1,
    scope: str = "global",
    method: str = "magnitude",
    seed: int = 0,
    overrides: Overrides = None,
    control: Optional[str] = None,
    progress: bool = True,
) -> Run:
    """A lottery ticket (``toylens ticket``): the mask of the run's weights at step `source`
    (default: final), the weights rewound to step `rewind`, trained into `out`. `rounds` > 1:
    iterative magnitude pruning. ``control="norm"``: the dense norm-matched control instead."""
    _toylens._ticket(
        os.fspath(_path(run)), os.fspath(out), sparsity, rewind, source, rounds, scope, method,
        seed, _overrides(overrides), control, progress,
    )
    return Run(out)


class Sweep:
    """A sweep directory: ``table`` (a row per run: axes, state, metrics) and its runs."""

    def __init__(self, dir: PathLike, failed: Sequence = ()):
        self.dir = pathlib.Path(dir)
        self.failed = list(failed)
        self.refresh()

    def refresh(self) -> "Sweep":
        t = _toylens._sweep_table(str(self.dir))
        self.axes: List[str] = t["axes"]
        self.metric_names: List[str] = t["metrics"]
        self.rows: List[Dict[str, Any]] = t["rows"]
        return self

    @property
    def table(self) -> Dict[str, Any]:
        """Columns: ``id``, ``state``, each axis (strings as given), each metric (float, NaN where
        a run has none). ``pandas.DataFrame(sweep.table)`` makes it a frame."""
        cols: Dict[str, Any] = {
            "id": np.array([r["id"] for r in self.rows]),
            "state": [r["state"] for r in self.rows],
        }
        for i, a in enumerate(self.axes):
            cols[a] = [r["values"][i] for r in self.rows]
        for i, m in enumerate(self.metric_names):
            cols[m] = np.array(
                [np.nan if r["metrics"][i] is None else r["metrics"][i] for r in self.rows]
            )
        return cols

    def run(self, id: int) -> Run:
        return Run(self.dir / str(id))

    def __repr__(self) -> str:
        return f"toylens.Sweep({str(self.dir)!r}, {len(self.rows)} runs)"


def sweep(
    preset: Optional[str] = "grokking",
    axes: Union[Sequence[str], Mapping[str, Any]] = (),
    out: Optional[PathLike] = None,
    jobs: Optional[int] = None,
    yes: bool = False,
    resume: Optional[PathLike] = None,
    progress: bool = True,
) -> Sweep:
    """Many runs of one preset (``toylens sweep``), run here by worker processes (one per core by
    default). axes: Hydra's multirun grammar, ``["optim.weight_decay=0,0.3,1", "seed=range(3)"]``,
    or ``{"optim.weight_decay": [0, 0.3, 1], "seed": "range(3)"}``; an entry without a comma is
    an override of every run. Failed runs are recorded (``Sweep.failed``) and the others finish.
    For Slurm, use the CLI (``toylens sweep ... --slurm``)."""
    if isinstance(axes, Mapping):
        args = [
            f"{k}={','.join(_value(x) for x in v)}" if isinstance(v, (list, tuple)) else f"{k}={_value(v)}"
            for k, v in axes.items()
        ]
    else:
        args = _overrides(axes)
    if resume is not None and preset == "grokking":
        preset = None
    d, failed = _toylens._sweep(
        preset, args, None if out is None else os.fspath(out), jobs, yes,
        None if resume is None else os.fspath(resume), sys.executable, progress,
    )
    return Sweep(d, failed)
