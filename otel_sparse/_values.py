"""Values as ``log()`` keeps them, and as the background writer turns them into numbers.

``capture`` runs on the caller's thread and must never read a tensor back to the host: it
only clones (on the tensor's own device, asynchronously for CUDA) so that a later in-place
edit by the caller cannot change what was logged. ``HostValues`` runs in the background: it
stacks the captured tensors of one batch per (device, dtype, shape), starts one non-blocking
copy per group, and hands back host arrays once the copies are done. Which device and stream
each CUDA call uses, and how a clone made on a side stream is waited for, is _cuda.py's.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from otel_sparse._compat import zip_strict
from otel_sparse._cuda import (
    READY,
    GpuTime,
    capturing,
    ensure,
    on_default_stream,
    pinned_empty,
    record_ready,
    wait_ready,
)
from otel_sparse.layout import HEAD_KEYS, LAYER_KEYS


class Refusal:
    """Returned by ``capture`` for a value that must not be queued, with the reason."""

    __slots__ = ("code", "why")

    def __init__(self, code: str, why: str) -> None:
        self.code = code
        self.why = why


TOO_MANY_DIMS = Refusal(
    "tensor_rank",
    "tensors may be 0-d, [heads] or [layers, heads]; reduce larger ones on the device first "
    "(for example t.float().mean(dim=(-2, -1)) for a [heads, seq, seq] map)",
)
IN_GRAPH_CAPTURE = Refusal(
    "cuda_graph_capture",
    "log() was called while a CUDA graph is being captured; values are skipped during capture",
)

HEADS_IN_METADATA = Refusal(
    "tensor_metadata_clash",
    "a [heads] tensor already spans the heads: log it with only the layer in metadata "
    "(or one scalar per head)",
)
LAYERS_IN_METADATA = Refusal(
    "tensor_metadata_clash",
    "a [layers, heads] tensor already spans layers and heads: log it without layer/head in "
    "metadata (or a [heads] tensor per layer)",
)

MAX_TENSOR_DIMS = 2
"""0-d, [heads] or [layers, heads]. Larger tensors are refused, never copied to the host."""

Capture = Callable[[Any, Any], Any]
captures_by_type: dict[type, Capture] = {}
"""The capture function of each value type met so far (filled by ``capture``)."""


def _spans_metadata(dims: int, metadata: Any) -> Refusal | None:
    """The refusal for a [heads]/[layers, heads] value whose metadata names what it spans."""
    if not dims or type(metadata) is not dict or not metadata:
        return None
    if any(key in metadata for key in HEAD_KEYS):
        return HEADS_IN_METADATA if dims == 1 else LAYERS_IN_METADATA
    if dims == 2 and any(key in metadata for key in LAYER_KEYS):
        return LAYERS_IN_METADATA
    return None


def _keep(value: Any, metadata: Any) -> Any:
    return value


def _numpy_scalar(value: Any, metadata: Any) -> Any:
    item = value.item()
    if isinstance(item, np.generic):  # longdouble/clongdouble: no exact Python type exists
        kind = value.dtype.kind
        item = float(item) if kind == "f" else complex(item) if kind == "c" else item
    return item


def _numpy_array(value: Any, metadata: Any) -> Any:
    dims = value.ndim
    if dims > MAX_TENSOR_DIMS:
        return TOO_MANY_DIMS
    return _spans_metadata(dims, metadata) or value.copy()


def _torch_tensor(value: Any, metadata: Any) -> Any:
    dims = value.dim()
    if dims:
        if dims > MAX_TENSOR_DIMS:
            return TOO_MANY_DIMS
        # the common case (layer only) answered inline: this runs on every tensor log(),
        # and what it costs beyond the clone is what a tensor log() costs beyond a scalar one
        # (the keys spelt out are layout.HEAD_KEYS / LAYER_KEYS; test_layout checks they agree)
        if type(metadata) is dict and (
            "head_idx" in metadata or "head" in metadata
            or (dims == 2 and ("layer_idx" in metadata or "layer" in metadata))
        ):
            return _spans_metadata(dims, metadata)
    if value.is_cuda:
        return _cuda_clone(value, value.get_device())
    if value.requires_grad:
        value = value.detach()
    # clone, not a reference: the caller may edit the tensor in place after log() returns.
    return value.clone()


def _cuda_clone(value: Any, index: int) -> Any:
    """The clone of a tensor on ``cuda:index``, made on that device's current stream.

    On the default stream (the usual case) that is all: the writer reads on the same stream.
    On a side stream, an event after the clone rides on it for the writer to wait on (see
    _cuda.py); a side stream is also the only kind a CUDA graph is captured on, so the
    capture check is asked there alone.
    """
    if value.requires_grad:
        value = value.detach()
    if on_default_stream(index):
        return value.clone()
    if capturing(index):
        return IN_GRAPH_CAPTURE
    clone = value.clone()
    setattr(clone, READY, record_ready(index))
    return clone


def _gpu_time(value: Any, metadata: Any) -> Any:
    return value if value.start is not None else IN_GRAPH_CAPTURE


def _capture_for(tp: type) -> Capture:
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(tp, torch.Tensor):
        ensure()
        return _torch_tensor
    if tp is GpuTime:
        return _gpu_time
    if issubclass(tp, np.ndarray):
        return _numpy_array
    if issubclass(tp, np.generic):
        return _numpy_scalar
    return _keep


def capture(value: Any, metadata: Any = None) -> Any:
    """The value to queue for one ``log()`` call, or a Refusal. Cost: one dict lookup, plus a
    clone for tensors and arrays. Never synchronises with a GPU (reads shape and flags only).

    ``metadata`` is checked against what a [heads]/[layers, heads] value already spans.
    """
    tp = type(value)
    fn = captures_by_type.get(tp)
    if fn is None:
        fn = captures_by_type[tp] = _capture_for(tp)
    return fn(value, metadata)


_NESTED = (list, dict)


def take_metadata(metadata: Any) -> Any:
    """The metadata to queue for one ``log()`` call: what it holds now, not later.

    Researchers reuse one dict over layers (``meta["layer_idx"] = l``) and the writer reads
    it up to a write delay later. A shallow copy of the dict, and of the lists and dicts
    inside it: what they in turn hold is not copied. Cost: about a dict copy. None (or any
    empty value) becomes a new empty dict; metadata that is no dict is kept as given (the
    writer counts it as invalid).
    """
    if type(metadata) is dict:  # the usual case first: one copy, one pass over the values
        taken = {**metadata}
    elif not metadata:
        return {}
    elif isinstance(metadata, dict):
        taken = metadata.copy()
    else:
        return metadata
    for value in taken.values():
        if isinstance(value, _NESTED):
            break
    else:
        return taken
    for key, value in taken.items():
        if isinstance(value, _NESTED):
            taken[key] = value.copy()
    return taken


def real_number(value: Any) -> Any:
    """A float for any ``numbers.Real`` other than int and float (a ``float`` subclass such as
    ``class Density(float)``, a Fraction, an IntEnum), bools excepted (not a measurement);
    anything else unchanged, for the caller to refuse."""
    if type(value) is not bool and isinstance(value, numbers.Real):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return value
    return value


def cuda_index(tensor: Any) -> int:
    """The CUDA device index of ``tensor``, -1 for any other device."""
    return int(tensor.get_device()) if tensor.is_cuda else -1


def is_tensor(value: Any) -> bool:
    """True for torch tensors, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class HostValues:
    """Host copies of every tensor in one batch, made with one transfer per tensor group.

    Example:
        >>> hv = HostValues([np.array([1.0, 2.0])])
        >>> hv.ready()
        True
        >>> hv.arrays()[0].tolist()
        [1.0, 2.0]
    """

    def __init__(self, values: Sequence[Any]) -> None:
        self._arrays: list[np.ndarray | None] = [None] * len(values)
        self._pending: list[tuple[list[int], Any, Any, Any]] = []
        self.errors: dict[int, str] = {}
        """Index -> why that value could not be copied (meta or sparse tensors, say)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, value in enumerate(values):
            if isinstance(value, np.ndarray):
                self._arrays[i] = value
            else:
                key = (value.device, value.dtype, value.layout, tuple(value.shape))
                groups.setdefault(key, []).append(i)
        for indices in groups.values():
            try:
                self._start_copy(indices, [values[i] for i in indices])
            except Exception as exc:  # one odd tensor must not lose the rest of the batch
                if len(indices) == 1:
                    self.errors[indices[0]] = f"{type(exc).__name__}: {exc}"
                else:
                    for i in indices:
                        try:
                            self._start_copy([i], [values[i]])
                        except Exception as exc_one:
                            self.errors[i] = f"{type(exc_one).__name__}: {exc_one}"

    def _start_copy(self, indices: list[int], tensors: list[Any]) -> None:
        import torch

        if tensors[0].is_meta:
            raise ValueError("a meta tensor holds no data")
        clones = tensors
        index = cuda_index(tensors[0])
        waits = None
        if index >= 0:
            ensure()
            waits = [e for e in (getattr(t, READY, None) for t in tensors) if e is not None]
            if waits:  # logged on a side stream: this thread's stream waits for the clones
                wait_ready(index, waits)
        if tensors[0].layout != torch.strided:  # sparse COO/CSR/...: numpy wants them dense
            tensors = [t.to_dense() for t in tensors]
        if tensors[0].is_quantized:
            tensors = [t.dequantize() for t in tensors]
        stacked = torch.stack(tensors).resolve_conj().resolve_neg()
        if stacked.dtype in (torch.bfloat16, torch.float16):
            stacked = stacked.float()  # numpy has no bfloat16
        if index >= 0:
            # pinned + non_blocking + event: the copy never blocks, so nothing here
            # synchronises the GPU (set_sync_debug_mode("error") stays quiet). Every call
            # names the tensors' device (see _cuda.py).
            host = pinned_empty(stacked.shape, stacked.dtype)
            host.copy_(stacked, non_blocking=True)
            done = record_ready(index)
            # side-stream clones stay alive until the copy is done (see _cuda.py)
            self._pending.append((indices, host, done, clones if waits else None))
        else:
            self._pending.append((indices, stacked.cpu(), None, None))

    def ready(self) -> bool:
        """True when every device-to-host copy has finished (polls; never blocks)."""
        return all(done is None or done.query() for _, _, done, _ in self._pending)

    def arrays(self) -> list[np.ndarray | None]:
        """One host array per input value; call only once ``ready()`` is True."""
        for indices, host, _, _ in self._pending:
            try:
                stacked = host.numpy()
            except Exception as exc:  # a dtype numpy lacks: these values alone are lost
                for i in indices:
                    self.errors[i] = f"{type(exc).__name__}: {exc}"
                continue
            for row, i in zip_strict(stacked, indices):
                self._arrays[i] = np.asarray(row)  # 0-d rows come out as numpy scalars
        self._pending = []
        return self._arrays
