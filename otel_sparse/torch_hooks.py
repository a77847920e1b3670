"""Attention density per layer and head from forward hooks, without editing model code.

``instrument_attention(model)`` finds the attention modules of a model and attaches a forward
hook to each; the hook reduces what the module returned (attention weights, by default) to one
``[heads]`` tensor per metric, on the module's device, and hands it to
``MicroMetricLogger.log(metric, per_head, {"layer_idx": layer})``. Import this module
explicitly: ``import otel_sparse`` never imports torch.

Per forward call of the model, with L instrumented layers and M metrics:

- eager: L hook calls, M small reductions and M ``log()`` calls (each a clone on the device)
  per layer. Nothing is read back to the host. On steps skipped by ``every_n_steps`` a hook
  is one attribute check.
- ``torch.compile``: the reductions are traced into the model's graph; the hooks only keep
  their results (an attribute store that Dynamo replays after the graph, so no graph break),
  and a forward hook on the model, which Dynamo never traces, passes them to ``log()`` once
  the compiled call returns.
- CUDA graph capture: nothing is computed or logged while the current stream is capturing.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from otel_sparse.facade import MicroMetricLogger

__all__ = [
    "DENSITY",
    "Extractor",
    "Handle",
    "LayerIndex",
    "attention_weights",
    "default_extractor",
    "density",
    "instrument_attention",
    "is_attention_module",
    "mask_extractor",
]

_logger = logging.getLogger("otel_sparse")

DENSITY = "research_attention_density"
"""The metric the default extractor produces: the share of attention entries kept."""

Extractor = Callable[[nn.Module, tuple[Any, ...], Any], Optional[Mapping[str, torch.Tensor]]]
"""``extractor(module, inputs, output) -> {metric: per_head_tensor}``; run inside the hook."""

LayerIndex = Callable[[str, nn.Module], Optional[int]]
"""``layer_index(name, module) -> layer`` (None: leave the module alone)."""

_DESCRIPTIONS = {
    DENSITY: "Share of attention entries kept (nonzero weight or True mask entry), per layer "
             "and head",
}


# -- extractors: tensor -> [heads], on the device --------------------------------------------


def density(values: torch.Tensor, head_dim: int = 1) -> torch.Tensor:
    """Share of nonzero entries per head: a float32 ``[heads]`` tensor on ``values``' device.

    Works for boolean masks (True = kept) and attention weights (0 = dropped); the mean runs
    over every dimension but ``head_dim`` (batch, queries, keys). Cost: one ``count_nonzero``
    kernel and one division; no host read.

    Args:
        values: a mask or weights, e.g. ``[batch, heads, queries, keys]``.
        head_dim: the dimension that indexes heads.
    """
    head_dim = head_dim % values.dim()
    dims = tuple(d for d in range(values.dim()) if d != head_dim)
    per_head = values.numel() // values.shape[head_dim]
    return torch.count_nonzero(values, dim=dims) / per_head


def attention_weights(output: Any) -> torch.Tensor | None:
    """The first 4-D tensor of a tuple/list output (``[batch, heads, q, k]`` weights), or None.

    ``nn.MultiheadAttention`` returns such weights only when called with
    ``need_weights=True, average_attn_weights=False``; averaged ``[batch, q, k]`` weights have
    no head dimension and are ignored.
    """
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor) and item.dim() == 4:
                return item
    return None


def default_extractor(
    module: nn.Module, inputs: tuple[Any, ...], output: Any
) -> dict[str, torch.Tensor]:
    """``{DENSITY: density(weights)}`` when the module returns per-head weights, else ``{}``."""
    weights = attention_weights(output)
    if weights is None:
        return {}
    return {DENSITY: density(weights)}


def mask_extractor(attribute: str, *, head_dim: int = 1, metric: str = DENSITY) -> Extractor:
    """An extractor that reads a mask the module keeps as an attribute during forward.

    For sparse attention modules that store their mask (``self.last_mask = keep``, True =
    attended): ``instrument_attention(model, extractor=mask_extractor("last_mask"))``.

    Args:
        attribute: the module attribute holding the mask (missing or None: nothing logged).
        head_dim: the mask dimension that indexes heads.
        metric: the metric the density is logged under.
    """

    def extract(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> dict[str, Any]:
        mask = getattr(module, attribute, None)
        if not isinstance(mask, torch.Tensor):
            return {}
        return {metric: density(mask, head_dim)}

    extract.__qualname__ = f"mask_extractor({attribute!r})"
    _MASK_ATTRIBUTE[extract] = attribute
    return extract


_MASK_ATTRIBUTE: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()
"""The attribute each ``mask_extractor`` reads: an empty result of one is explained."""


def _why_nothing(module: nn.Module, name: str, extract: Extractor, output: Any) -> str | None:
    """Why a built-in extractor found nothing in ``module``'s call, and what to pass instead.

    None for the researcher's own extractors: returning nothing is theirs to decide.
    """
    masks = sorted(key for key, value in vars(module).items()
                   if isinstance(value, torch.Tensor) and value.dim() >= 2)
    pass_instead = (f"extractor=mask_extractor({masks[0]!r})" if masks else
                    "extractor=mask_extractor('<attribute that holds the mask>')")
    where = f"{name} ({type(module).__name__})"
    if extract is default_extractor:
        returned = type(output).__name__
        if isinstance(output, (tuple, list)):
            returned = f"{returned} of " + ", ".join(_describe(item) for item in output)
        elif isinstance(output, torch.Tensor):
            returned = _describe(output)
        fix = f"pass {pass_instead}, or your own extractor(module, inputs, output)"
        if isinstance(module, nn.MultiheadAttention):
            fix = f"call it with need_weights=True, average_attn_weights=False, or {fix}"
        return (f"{where} returned no [batch, heads, q, k] attention weights (it returned "
                f"{returned}), so the default extractor logs nothing for it: {fix} "
                "(docs/torch.md)")
    attribute = _MASK_ATTRIBUTE.get(extract)
    if attribute is not None:
        return (f"{where} has no tensor attribute {attribute!r} after its forward, so "
                f"mask_extractor({attribute!r}) logs nothing for it: pass {pass_instead}, or "
                "your own extractor(module, inputs, output) (docs/torch.md)")
    return None


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D tensor"
    return type(value).__name__


def is_attention_module(module: nn.Module) -> bool:
    """The default selection: ``nn.MultiheadAttention``, or a class named ``*Attention``."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith(
        "Attention"
    )


# -- hooks ------------------------------------------------------------------------------------


def _never() -> bool:
    return False


def _capture_check() -> Callable[[], bool]:
    """``torch.cuda.is_current_stream_capturing`` where CUDA exists; a constant False elsewhere."""
    if torch.cuda.is_available():
        return torch.cuda.is_current_stream_capturing
    return _never


class _LayerHook:
    """The forward hook of one attention module: reduce on the device, then log or keep."""

    def __init__(
        self, handle: Handle, index: int, name: str, module: nn.Module, extract: Extractor,
        metrics: tuple[str, ...],
    ) -> None:
        self.handle = handle
        self.index = index
        self.name = name
        self.extract = extract
        self.metrics = metrics
        self.metadata = {"layer_idx": index}
        cls = type(module)
        self.location = f"{cls.__module__}.{cls.__qualname__}.forward"
        self.latest: tuple[Any, ...] | None = None
        """Values a compiled forward left for ``Handle._after`` (None: nothing pending)."""
        self.failed = False
        self.explained = False
        """Whether the one warning for a call that gave nothing to log was given."""

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if torch.compiler.is_compiling():
            # Traced into the graph: the reduction becomes part of it, and this store is a
            # side effect Dynamo replays after the graph. Logging waits for Handle._after.
            with torch.no_grad():
                self.latest = _pick(self.extract(module, inputs, output), self.metrics)
            return
        handle = self.handle
        if not handle.active or handle.capturing():
            return
        try:
            if torch.is_grad_enabled():  # no_grad() costs a few µs: only where it matters
                with torch.no_grad():
                    values = _pick(self.extract(module, inputs, output), self.metrics)
            else:
                values = _pick(self.extract(module, inputs, output), self.metrics)
        except Exception as exc:  # a metrics hook must never break the forward pass
            if not self.failed:
                self.failed = True
                _logger.warning("otel_sparse: extractor failed on %s (layer %d): %s: %s",
                                self.name, self.index, type(exc).__name__, exc)
            return
        if values is None and not self.explained:
            self.explain(module, output)
        handle.emit(self, values)

    def explain(self, module: nn.Module, output: Any) -> None:
        """Once per module: a built-in extractor found nothing, so say why (never silent)."""
        self.explained = True
        why = _why_nothing(module, self.name, self.extract, output)
        if why is not None:
            _logger.warning("otel_sparse: instrument_attention: layer %d: %s", self.index, why)


def _pick(values: Mapping[str, Any] | None, metrics: tuple[str, ...]) -> tuple[Any, ...] | None:
    if not values:
        return None
    return tuple([values.get(metric) for metric in metrics])


class Handle:
    """What ``instrument_attention`` attached; ``remove()`` or leaving a ``with`` block detaches.

    Example:
        >>> with instrument_attention(model) as handle:       # doctest: +SKIP
        ...     model(x)
        >>> handle.layers                                      # doctest: +SKIP
        {0: 'blocks.0.attn', 1: 'blocks.1.attn'}
    """

    def __init__(
        self, logger: MicroMetricLogger | None, metrics: tuple[str, ...], every_n_steps: int
    ) -> None:
        self.metrics = metrics
        self.every_n_steps = every_n_steps
        self.active = True
        """Whether the current forward call is one that logs."""
        self.capturing = _capture_check()
        self._logger = logger
        self._calls = 0
        self._hooks: list[_LayerHook] = []
        self._removables: list[RemovableHandle] = []

    @property
    def layers(self) -> dict[int, str]:
        """Layer index -> qualified name of the attention module."""
        return {hook.index: hook.name for hook in self._hooks}

    @property
    def steps(self) -> int:
        """Forward calls of the model seen so far (outside CUDA graph capture)."""
        return self._calls

    @property
    def removed(self) -> bool:
        """Whether ``remove()`` ran."""
        return not self._removables

    def emit(self, hook: _LayerHook, values: tuple[Any, ...] | None) -> None:
        """Log one layer's values. Cost: one ``log()`` per metric; no host read."""
        if values is None:
            return
        logger = self._logger if self._logger is not None else MicroMetricLogger()
        for metric, value in zip(self.metrics, values):  # same length: one value per metric
            if value is not None:
                logger.log(metric, value, hook.metadata, _location=hook.location)

    def flush(self) -> None:
        """Log what compiled forwards left behind (the model's forward hook does it per call).

        Needed only when the model's own ``__call__`` runs inside a compiled region (say a
        compiled training step); otherwise the values are logged right after each call.
        """
        log = self.active and not self.capturing()
        for hook in self._hooks:
            values = hook.latest
            if values is not None:
                hook.latest = None
                if log:
                    self.emit(hook, values)

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook of the model: count the call, decide whether it logs."""
        if self.capturing():
            self.active = False
            return
        self.active = self._calls % self.every_n_steps == 0
        self._calls += 1

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Forward hook of the model: log values kept by compiled hooks (eager: no-op loop)."""
        self.flush()

    def remove(self) -> None:
        """Detach every hook; values not yet logged are dropped. Safe to call twice."""
        removables, self._removables = self._removables, []
        for removable in removables:
            removable.remove()
        for hook in self._hooks:
            hook.latest = None

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self._hooks)} layers"
        return f"<otel_sparse.torch_hooks.Handle {state}, every_n_steps={self.every_n_steps}>"


# -- entry point ------------------------------------------------------------------------------


_F = TypeVar("_F", bound=Callable[..., Any])


def _never_traced(fn: _F) -> _F:
    """``torch.compiler.disable``: Dynamo runs ``fn`` as plain Python, never in a graph."""
    return torch.compiler.disable(fn)  # type: ignore[no-untyped-call, no-any-return]


def _matches(module: nn.Module, module_types: tuple[type[nn.Module], ...] | None) -> bool:
    if module_types is None:
        return is_attention_module(module)
    return isinstance(module, module_types)


def _register(metrics: Sequence[str], logger: MicroMetricLogger | None) -> None:
    """Register unknown metrics as float histograms with unit "1" (and enable them on a
    logger that is already configured: no one can have chosen to leave out an unknown id)."""
    registered = MicroMetricLogger.get_registered_metrics()
    new = [metric for metric in metrics if metric not in registered]
    for metric in new:
        MicroMetricLogger.register_metric(
            metric, float, kind="histogram", unit="1",
            description=_DESCRIPTIONS.get(metric, f"{metric} per layer and head"),
        )
    target = logger if logger is not None else MicroMetricLogger._instance
    if new and target is not None and target.is_logging_configured():
        missing = set(new) - target.get_enabled_metrics()
        if missing:  # under "all" there are none: enabling a set here would end "all"
            target.enable_metrics(target.get_enabled_metrics() | missing)


def instrument_attention(
    model: nn.Module,
    logger: MicroMetricLogger | None = None,
    *,
    module_types: Sequence[type[nn.Module]] | None = None,
    extractor: Extractor | None = None,
    metrics: Sequence[str] = (DENSITY,),
    layer_index: LayerIndex | None = None,
    every_n_steps: int = 1,
) -> Handle:
    """Log per-head attention metrics of every attention module of ``model`` on each forward.

    Args:
        model: the model; its forward calls are the steps that ``every_n_steps`` counts.
        logger: where values go; None: the ``MicroMetricLogger()`` singleton at log time.
        module_types: classes to instrument; None: ``nn.MultiheadAttention`` and every class
            whose name ends with ``Attention``. Modules nested in a chosen one are skipped.
        extractor: ``extractor(module, inputs, output) -> {metric: [heads] tensor}``, run in
            the hook on the device (no ``.item()``); default: density of the per-head weights
            a module returns (see ``default_extractor``).
        metrics: the metric ids to log (other keys the extractor returns are ignored); ids not
            yet registered are registered as float histograms with unit ``"1"``.
        layer_index: ``layer_index(name, module) -> int | None`` gives each module's layer
            (None skips the module); default: order of discovery, from 0.
        every_n_steps: log on forward calls 0, N, 2N, ... of the model.

    Returns:
        A ``Handle``; ``handle.remove()`` (or a ``with`` block) detaches every hook.

    Raises:
        ValueError: ``every_n_steps`` below 1, no metric, or two modules given one layer.

    Example:
        >>> from otel_sparse.torch_hooks import instrument_attention    # doctest: +SKIP
        >>> handle = instrument_attention(model, every_n_steps=10)       # doctest: +SKIP
    """
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise ValueError(f"every_n_steps must be an int of at least 1, got {every_n_steps!r}")
    wanted = tuple(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    if not wanted or not all(isinstance(metric, str) for metric in wanted):
        raise ValueError(f"metrics must be one or more metric ids, got {metrics!r}")
    types = tuple(module_types) if module_types is not None else None
    extract: Extractor = extractor if extractor is not None else default_extractor

    chosen: dict[int, tuple[str, nn.Module]] = {}
    inside: list[str] = []  # prefixes of chosen modules: what they contain is theirs
    for name, module in model.named_modules():
        if not _matches(module, types) or any(name.startswith(p) for p in inside):
            continue
        index = len(chosen) if layer_index is None else layer_index(name, module)
        if index is None:
            continue
        index = int(index)
        if index in chosen:
            raise ValueError(f"layer {index} given to both {chosen[index][0]!r} and {name!r}")
        chosen[index] = (name, module)
        inside.append(f"{name}." if name else "")
    if not chosen:
        _logger.warning("otel_sparse: instrument_attention found no attention module in %s",
                        type(model).__name__)
    _register(wanted, logger)

    handle = Handle(logger, wanted, every_n_steps)
    for index, (name, module) in chosen.items():
        hook = _LayerHook(handle, index, name or type(module).__name__, module, extract, wanted)
        handle._hooks.append(hook)
        handle._removables.append(module.register_forward_hook(hook))
    # The model's own hooks count steps and log what compiled hooks kept. disable() keeps
    # Dynamo out of them: under torch.compile(model) they run around the compiled forward
    # (no graph break); where the model call itself is traced, they break the graph once.
    handle._removables.append(model.register_forward_pre_hook(_never_traced(handle._before)))
    handle._removables.append(model.register_forward_hook(_never_traced(handle._after)))
    return handle
