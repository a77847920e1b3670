"""The one seam between otel_sparse and ``torch.cuda``: which device and stream each call uses.

Every CUDA call otel_sparse makes names its device. A call without one
(``torch.cuda.current_stream()``, ``Event.record()`` with no stream,
``is_current_stream_capturing()``) runs on the current device, which stays 0 unless the
process set it: a process that only uses ``cuda:1`` would get a context (hundreds of MiB) on
``cuda:0``, and an event recorded on the wrong device orders nothing. So a tensor on
``cuda:N`` is cloned, waited for, copied and polled on ``cuda:N``.

Streams: ``log()`` clones a tensor on the current stream of the tensor's device, and the
writer reads the clone later, from its own thread, on that device's default stream. When the
two are the same stream, stream order makes the read wait for the clone; otherwise
``log()`` records an event on the logging stream after the clone, and the writer's stream
waits on it before it reads (``cudaStreamWaitEvent``: the host never waits). The writer
keeps the clone alive until its copy to the host has finished, so the caching allocator
cannot hand the clone's memory to new work on the logging stream while the copy still reads
it (the job ``Tensor.record_stream`` would do, without its extra event on every free).

GPU timers record two timing events around a block on the device's current stream and hand
a ``GpuTime`` to ``log()``; the writer polls ``Event.query()`` and turns the pair into seconds
once the GPU has passed the second event. Nothing here synchronises the caller.

Tests swap ``api`` for a recording fake of the few ``torch.cuda`` functions used here
(``install``), and ``pinned_empty`` for a plain allocation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

_logger = logging.getLogger("otel_sparse")

api: Any = None
"""``torch.cuda`` (or a test's fake of it), once a CUDA tensor or GPU timer was met."""

_stream_key: Callable[[int], Any] = None  # type: ignore[assignment]
"""Device index -> a tuple whose first item is the id of that device's current stream."""

_default_ids: dict[int, int] = {}
"""Device index -> the id of its default stream (asked once per device)."""

READY = "_otel_sparse_ready"
"""The attribute of a clone made on a side stream: the event recorded after the clone."""


def install(cuda: Any, stream_key: Callable[[int], Any] | None = None) -> None:
    """Use ``cuda`` (``torch.cuda`` or a fake) for every CUDA call from now on.

    Args:
        cuda: the module (or an object with the same functions).
        stream_key: a fast ``index -> (stream_id, ...)``; by default the public twin
            ``(cuda.current_stream(index).stream_id,)``.
    """
    global api, _stream_key
    api = cuda
    _stream_key = stream_key or (lambda index: (cuda.current_stream(index).stream_id,))
    _default_ids.clear()


def ensure() -> Any:
    """``torch.cuda``, installed on first use (torch must already be importable)."""
    if api is None:
        import torch

        # torch._C._cuda_getCurrentStream(index) is what torch.cuda.current_stream(index)
        # calls, without building a Stream object: a tenth of the cost on every CUDA log().
        install(torch.cuda, getattr(torch._C, "_cuda_getCurrentStream", None))
    return api


def on_default_stream(index: int) -> bool:
    """True when device ``index``'s current stream is its default stream.

    Cost: one C call and a dict lookup. It asks the stream bookkeeping only, so it creates no
    context on any device.
    """
    default = _default_ids.get(index)
    if default is None:
        default = _default_ids[index] = api.default_stream(index).stream_id
    return bool(_stream_key(index)[0] == default)


def capturing(index: int) -> bool:
    """True while device ``index``'s current stream is capturing a CUDA graph.

    Only asked on a side stream: a CUDA graph is never captured on the default stream
    (torch refuses to), so on the default stream the answer is always False.
    """
    with api.device(index):  # the check reads the *current* device's stream
        return bool(api.is_current_stream_capturing())


def record_ready(index: int) -> Any:
    """An event recorded now on device ``index``'s current stream (after the work queued)."""
    event = api.Event()
    event.record(api.current_stream(index))
    return event


def wait_ready(index: int, events: list[Any]) -> Any:
    """Make device ``index``'s current stream (of this thread) wait on ``events``; that stream."""
    stream = api.current_stream(index)
    for event in events:
        stream.wait_event(event)
    return stream


def pinned_empty(shape: Any, dtype: Any) -> Any:
    """A page-locked host tensor for a non-blocking device-to-host copy.

    Pinned memory is allocated under whichever device already has a context, so this creates
    none.
    """
    import torch

    return torch.empty(shape, dtype=dtype, pin_memory=True)


# -- GPU timers ------------------------------------------------------------------------------


class GpuTime:
    """A timed block's pair of CUDA events, queued by ``log()`` and resolved by the writer.

    ``start`` is None when the block ran during CUDA graph capture: nothing was recorded
    (``capture()`` refuses such a value).
    """

    __slots__ = ("end", "start")

    def __init__(self, start: Any, end: Any) -> None:
        self.start = start
        self.end = end

    def ready(self) -> bool:
        """True once the GPU passed the end event (polls; never blocks)."""
        return bool(self.end.query())

    def seconds(self) -> float:
        """The GPU time between the two events, in seconds; only once ``ready()``."""
        return float(self.start.elapsed_time(self.end)) / 1000.0


_note_given: set[str] = set()


def _note_once(key: str, message: str, *args: Any) -> None:
    if key not in _note_given:
        _note_given.add(key)
        _logger.warning(message, *args)


_parsed: dict[Any, int | None] = {}
"""Device argument of timer() -> device index (-1: the current device), None: host time."""


def timer_device(device: Any) -> int | None:
    """The CUDA device index a GPU timer for ``device`` uses, or None to time host time.

    ``"cuda"`` is the current device at each call; ``"cuda:N"``, ``N`` or a torch.device
    name one. ``"cpu"`` times host time. Without a usable CUDA device, or for a device
    argument that names none of these, host time is timed and a note is logged once.
    """
    try:
        index = _parsed[device]
    except (KeyError, TypeError):  # TypeError: an unhashable argument
        index = _parse(device)
        with contextlib.suppress(TypeError):
            _parsed[device] = index
    if index is None:
        return None
    if index < 0:
        return int(api.current_device())
    return index


def _parse(device: Any) -> int | None:
    text = str(device)
    kind, _, number = text.partition(":")
    if type(device) is int and device >= 0:
        kind, number = "cuda", text
    if kind == "cpu" and not number:
        return None
    if kind != "cuda" or not (number == "" or number.isdigit()):
        _note_once(f"device {text}",
                   "otel_sparse: timer(device=%r) names no CUDA device (use 'cuda', 'cuda:N' "
                   "or 'cpu'); timing host time instead", device)
        return None
    cuda, why = _usable_cuda()
    if cuda is None:
        _note_once("no cuda",
                   "otel_sparse: timer(device=%r) found no CUDA device (%s); timing host time "
                   "(perf_counter) instead", device, why)
        return None
    if number and int(number) >= cuda.device_count():
        _note_once(f"device {text}",
                   "otel_sparse: timer(device=%r): this process sees %d CUDA device(s); timing "
                   "host time instead", device, cuda.device_count())
        return None
    return int(number) if number else -1


def _usable_cuda() -> tuple[Any, str]:
    """(torch.cuda or the installed fake, "") when a CUDA device is usable, else (None, why)."""
    if api is None:
        try:
            ensure()
        except ImportError:
            return None, "torch is not installed"
    if not api.is_available():
        return None, "torch.cuda.is_available() is False"
    return api, ""


class CudaTimer:
    """Times a block on the GPU: two timing events on the device's current stream.

    ``elapsed`` stays None: the seconds exist only once the GPU ran the block, and the
    background writer reads them then. Cost: two events created and recorded, one ``log()``.
    """

    __slots__ = ("_identifier", "_index", "_location", "_logger", "_metadata", "_start",
                 "_stream", "elapsed")

    def __init__(
        self, logger: Any, identifier: str, metadata: dict[str, Any], location: str, index: int
    ) -> None:
        self._logger = logger
        self._identifier = identifier
        self._metadata = metadata
        self._location = location
        self._index = index
        self._start: Any = None
        self._stream: Any = None
        self.elapsed: float | None = None

    def __enter__(self) -> CudaTimer:
        index = self._index
        if on_default_stream(index) or not capturing(index):
            # the end event goes on this same stream, whatever is current at exit
            stream = self._stream = api.current_stream(index)
            start = self._start = api.Event(enable_timing=True)
            start.record(stream)
        return self

    def __exit__(self, *exc: object) -> None:
        start = self._start
        end = None
        if start is not None:
            end = api.Event(enable_timing=True)
            end.record(self._stream)
        self._logger.log(self._identifier, GpuTime(start, end), self._metadata,
                         _location=self._location)


def resolve_times(events: list[Any], values: list[Any], sleep: Callable[[float], None],
                  poll_s: float) -> list[tuple[int, str]]:
    """Replace each ``GpuTime`` value (in ``values`` and on its event) by its seconds.

    Polls ``query()`` until the GPU passed every end event; never synchronises. A pair whose
    events fail (a CUDA error) becomes None. Returns (position, why) for those.
    """
    at = [i for i, value in enumerate(values) if type(value) is GpuTime]
    failed: list[tuple[int, str]] = []
    waiting = at
    while waiting:
        still = []
        for i in waiting:
            try:
                if not values[i].ready():
                    still.append(i)
            except Exception as exc:
                failed.append((i, f"{type(exc).__name__}: {exc}"))
                values[i] = events[i].value = None
        waiting = still
        if waiting:
            sleep(poll_s)
    for i in at:
        if values[i] is None:
            continue
        try:
            seconds: float | None = values[i].seconds()
        except Exception as exc:
            failed.append((i, f"{type(exc).__name__}: {exc}"))
            seconds = None
        values[i] = events[i].value = seconds
    return failed
