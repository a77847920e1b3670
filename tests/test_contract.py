"""Every line of shared/reference/micro-metric-logger-contract.md, as a test.

The contract is the observable behaviour of sparse-attention-hub's ``MicroMetricLogger`` that
``otel_sparse`` must keep. Each class below covers one section of that page; each test pins one
fact with a real outcome (exact stdout, queue contents, bytes in the event file).
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import gc
import json
import logging
import math
import os
import random
import time
import typing
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import LogEvent, MicroMetricLogger

EVENT_FILE = "micro_metrics.jsonl"
FILE_DEADLINE_S = 2.0
"""How long a background write may take to show up in the event file (polled, not timed)."""
HOLD_EVENTS_S = "3600"
"""OTEL_SPARSE_WRITE_DELAY for tests that must tell a flush apart from the periodic write."""

Logger = type[MicroMetricLogger]


# -- helpers -----------------------------------------------------------------------------------


def _event_file(log_dir: Path | str) -> Path:
    return Path(log_dir) / EVENT_FILE


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def _wait_for_lines(path: Path, count: int, deadline_s: float = FILE_DEADLINE_S) -> list[str]:
    """The file's lines once it holds ``count`` of them, or whatever it holds at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        lines = _lines(path)
        if len(lines) >= count or time.monotonic() >= deadline:
            return lines
        time.sleep(0.01)


def _values(lines: list[str]) -> list[Any]:
    return [json.loads(line)["value"] for line in lines]


def _old_line(event: LogEvent) -> str:
    """The line the old logger wrote: json.dumps(asdict(event)) with an isoformat timestamp."""
    record = dataclasses.asdict(event)
    record["timestamp"] = record["timestamp"].isoformat()
    return json.dumps(record)


def _contract_line(event: LogEvent) -> str:
    return json.dumps(
        {
            "timestamp": event.timestamp.isoformat(),
            "metric": event.metric,
            "value": event.value,
            "metadata": event.metadata,
            "location": event.location,
        }
    )


def _reset_singleton() -> None:
    MicroMetricLogger._instance = None
    MicroMetricLogger._initialized = False


def _drop_records(caplog: pytest.LogCaptureFixture, word: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if (r.name == "otel_sparse" or r.name.startswith("otel_sparse."))
        and word in r.getMessage()
    ]


def _log_from_function(logger: MicroMetricLogger) -> None:
    logger.log("m", 2.0)


class _Attention:
    def forward(self, logger: MicroMetricLogger) -> None:
        logger.log("m", 3.0, {"layer_idx": 0})


def _not_enabled(identifier: str) -> str:
    return f"Warning: Attempting to log metric '{identifier}' which is not enabled\n"


def _no_path(identifier: str) -> str:
    return (
        f"Warning: Cannot log metric '{identifier}' - log_path not defined. "
        "Use configure_logging() first.\n"
    )


# -- LogEvent ----------------------------------------------------------------------------------


class TestLogEvent:
    """``LogEvent``: a dataclass with exactly five fields, in order."""

    def test_is_a_dataclass(self) -> None:
        """LogEvent is a dataclass (asdict works on it)."""
        assert dataclasses.is_dataclass(LogEvent)

    def test_fields_in_order(self) -> None:
        """The fields are exactly timestamp, metric, value, metadata, location, in that order."""
        names = [f.name for f in dataclasses.fields(LogEvent)]
        assert names == ["timestamp", "metric", "value", "metadata", "location"]

    def test_field_types(self) -> None:
        """The fields are typed datetime, str, Any | None, dict[str, Any], str."""
        hints = typing.get_type_hints(LogEvent)
        assert hints == {
            "timestamp": datetime,
            "metric": str,
            "value": typing.Optional[Any],
            "metadata": dict[str, Any],
            "location": str,
        }

    def test_positional_construction_and_asdict(self) -> None:
        """A LogEvent built positionally keeps each argument in the matching field."""
        ts = datetime(2025, 1, 2, 3, 4, 5, 678901)
        event = LogEvent(ts, "density", 0.25, {"layer_idx": 3}, "model.Attn.forward")
        assert dataclasses.asdict(event) == {
            "timestamp": ts,
            "metric": "density",
            "value": 0.25,
            "metadata": {"layer_idx": 3},
            "location": "model.Attn.forward",
        }


# -- class-level state -------------------------------------------------------------------------


class TestClassState:
    """``_instance``, ``_initialized`` and ``_registered_metrics`` live on the class."""

    def test_instance_is_none_until_first_construction(self, fresh_logger: Logger) -> None:
        """_instance is None before the first call and the logger itself after it."""
        assert MicroMetricLogger._instance is None
        logger = fresh_logger()
        assert MicroMetricLogger._instance is logger

    def test_initialized_is_a_bool_set_by_construction(self, fresh_logger: Logger) -> None:
        """_initialized is False before the first call and True after it."""
        assert MicroMetricLogger._initialized is False
        fresh_logger()
        assert MicroMetricLogger._initialized is True

    def test_reset_gives_a_fresh_singleton(self, fresh_logger: Logger) -> None:
        """Setting _instance/_initialized back to None/False makes the next call a new object."""
        first = fresh_logger()
        _reset_singleton()
        second = MicroMetricLogger()
        assert second is not first
        assert MicroMetricLogger() is second

    def test_nothing_but_registrations_survives_reset(
        self, fresh_logger: Logger, tmp_path: Path
    ) -> None:
        """After a reset, path, limits, enabled set, queue and totals are back to defaults."""
        MicroMetricLogger.register_metric("m", float)
        old = fresh_logger(
            log_path=str(tmp_path / "old"), flush_every=50, flush_interval=5.0,
            enabled_metrics="all", max_records=10, sampling_factor=0.5,
        )
        for i in range(20):
            old.log("m", float(i))
        assert old.get_total_records_logged() > 0
        _reset_singleton()
        new = MicroMetricLogger()
        assert new is not old
        assert new.log_path is None
        assert new.is_logging_configured() is False
        assert new.flush_every == 1000
        assert new.flush_interval == 60.0
        assert new.enabled_metrics == set()
        assert len(new.log_queue) == 0
        assert new.max_records is None
        assert new.sampling_factor == 1.0
        assert new.get_total_records_logged() == 0
        assert MicroMetricLogger.get_registered_metrics() == {"m": float}

    def test_registrations_survive_reset(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """An id registered before a reset can be enabled with "all" on the fresh singleton."""
        MicroMetricLogger.register_metric("kept", float)
        fresh_logger()
        _reset_singleton()
        logger = MicroMetricLogger(log_path=str(tmp_path), enabled_metrics="all")
        assert logger.get_enabled_metrics() == {"kept"}

    def test_registry_is_a_class_level_dict(self, fresh_logger: Logger) -> None:
        """_registered_metrics is a dict id -> dtype on the class, seen by every instance."""
        MicroMetricLogger.register_metric("density", float)
        MicroMetricLogger.register_metric("count", int)
        registry = MicroMetricLogger._registered_metrics
        assert type(registry) is dict
        assert registry == {"density": float, "count": int}
        logger = fresh_logger()
        assert logger._registered_metrics is registry

    def test_registry_clear_unregisters_everything(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After _registered_metrics.clear(), nothing is registered and "all" enables nothing."""
        MicroMetricLogger.register_metric("density", float)
        MicroMetricLogger._registered_metrics.clear()
        assert MicroMetricLogger.get_registered_metrics() == {}
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        assert logger.get_enabled_metrics() == set()
        capsys.readouterr()
        MicroMetricLogger.register_metric("density", int)  # a first registration again
        assert capsys.readouterr().out == ""
        assert MicroMetricLogger.get_registered_metrics() == {"density": int}


# -- construction ------------------------------------------------------------------------------


class TestConstruction:
    """``MicroMetricLogger(...)``: a singleton whose first call alone applies its arguments."""

    def test_every_call_returns_the_same_object(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Calls with and without arguments all return the first object."""
        first = fresh_logger(log_path=str(tmp_path))
        assert MicroMetricLogger() is first
        assert MicroMetricLogger(log_path=str(tmp_path), flush_every=3) is first

    def test_defaults(self, fresh_logger: Logger) -> None:
        """Defaults: no path, flush_every 1000, flush_interval 60.0, no limit, sampling 1.0."""
        logger = fresh_logger()
        assert logger.log_path is None
        assert logger.flush_every == 1000
        assert logger.flush_interval == 60.0
        assert logger.max_records is None
        assert logger.sampling_factor == 1.0
        assert logger.enabled_metrics == set()

    def test_enabled_metrics_is_a_set(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """enabled_metrics is a plain set."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics=["m"])
        assert type(logger.enabled_metrics) is set
        assert logger.enabled_metrics == {"m"}

    def test_log_queue_is_a_deque_of_maxlen_10000(self, fresh_logger: Logger) -> None:
        """log_queue is an empty collections.deque with maxlen 10000."""
        logger = fresh_logger()
        assert isinstance(logger.log_queue, collections.deque)
        assert logger.log_queue.maxlen == 10000
        assert len(logger.log_queue) == 0

    def test_last_flush_time_is_epoch_seconds(self, fresh_logger: Logger) -> None:
        """last_flush_time is a float of seconds since the epoch, taken at construction."""
        before = time.time()
        logger = fresh_logger()
        after = time.time()
        assert type(logger.last_flush_time) is float
        assert before <= logger.last_flush_time <= after

    def test_arguments_by_position(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Positional arguments follow the contract order, log_path first and sampling last."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(str(tmp_path), 5, 30.0, ["m"], 7, 0.5)
        assert logger.log_path == str(tmp_path)
        assert logger.flush_every == 5
        assert logger.flush_interval == 30.0
        assert logger.enabled_metrics == {"m"}
        assert logger.max_records == 7
        assert logger.sampling_factor == 0.5

    def test_sampling_factor_clamped_above(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """A sampling_factor above 1 is stored as 1.0."""
        logger = fresh_logger(log_path=str(tmp_path), sampling_factor=1.5)
        assert logger.sampling_factor == 1.0
        assert logger.get_sampling_factor() == 1.0

    def test_sampling_factor_clamped_below(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """A sampling_factor below 0 is stored as 0.0."""
        logger = fresh_logger(log_path=str(tmp_path), sampling_factor=-0.5)
        assert logger.sampling_factor == 0.0
        assert logger.get_sampling_factor() == 0.0

    def test_directory_created_at_once(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """With a log_path, the (nested) directory exists as soon as the constructor returns."""
        log_dir = tmp_path / "a" / "b" / "c"
        fresh_logger(log_path=str(log_dir))
        assert log_dir.is_dir()

    def test_enabled_metrics_applied_with_log_path(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With a log_path, enabled_metrics is applied, unregistered ids warned about."""
        MicroMetricLogger.register_metric("m", float)
        MicroMetricLogger.register_metric("n", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics=["m", "ghost"])
        assert capsys.readouterr().out == (
            "Warning: Attempting to enable unregistered metrics: {'ghost'}\n"
        )
        assert logger.get_enabled_metrics() == {"m"}

    def test_enabled_metrics_not_applied_without_log_path(self, fresh_logger: Logger) -> None:
        """Without a log_path, enabled_metrics is not applied."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(enabled_metrics="all")
        assert logger.get_enabled_metrics() == set()

    def test_second_call_with_other_path_warns_and_changes_nothing(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A later call with another log_path prints the exact warning and changes nothing."""
        MicroMetricLogger.register_metric("m", float)
        MicroMetricLogger.register_metric("n", float)
        first_dir, second_dir = tmp_path / "first", tmp_path / "second"
        logger = fresh_logger(log_path=str(first_dir), flush_every=7, enabled_metrics=["m"])
        capsys.readouterr()
        again = MicroMetricLogger(
            log_path=str(second_dir), flush_every=9, flush_interval=1.0,
            enabled_metrics="all", max_records=3, sampling_factor=0.0,
        )
        assert capsys.readouterr().out == (
            f"Warning: MicroMetricLogger already initialized with log_path: {first_dir}\n"
        )
        assert again is logger
        assert logger.log_path == str(first_dir)
        assert logger.flush_every == 7
        assert logger.flush_interval == 60.0
        assert logger.get_enabled_metrics() == {"m"}
        assert logger.max_records is None
        assert logger.sampling_factor == 1.0
        assert not second_dir.exists()

    def test_second_call_with_same_path_is_silent(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A later call with the same log_path (or none) prints nothing and changes nothing."""
        logger = fresh_logger(log_path=str(tmp_path), flush_every=7)
        capsys.readouterr()
        MicroMetricLogger(log_path=str(tmp_path), flush_every=9)
        MicroMetricLogger(flush_every=11, max_records=2)
        assert capsys.readouterr().out == ""
        assert logger.flush_every == 7
        assert logger.max_records is None

    def test_second_call_cannot_add_a_path(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """A later call with a log_path does not configure a logger first built without one."""
        logger = fresh_logger()
        MicroMetricLogger(log_path=str(tmp_path / "late"))
        assert logger.log_path is None
        assert logger.is_logging_configured() is False
        assert not (tmp_path / "late").exists()


# -- registration ------------------------------------------------------------------------------


class TestRegistration:
    """``register_metric`` / ``get_registered_metrics``: class methods, no instance needed."""

    def test_register_before_any_instance(self, fresh_logger: Logger) -> None:
        """Registering and reading the registry works before any instance exists."""
        MicroMetricLogger.register_metric("density", float)
        assert MicroMetricLogger.get_registered_metrics() == {"density": float}
        assert MicroMetricLogger._instance is None

    def test_first_registration_is_silent(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A first registration prints nothing."""
        MicroMetricLogger.register_metric("density", float)
        MicroMetricLogger.register_metric("count", int)
        assert capsys.readouterr().out == ""

    def test_reregistration_warns_and_replaces_dtype(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Registering an id again prints the exact warning and replaces its dtype."""
        MicroMetricLogger.register_metric("density", float)
        MicroMetricLogger.register_metric("density", int)
        assert capsys.readouterr().out == "Warning: Metric 'density' is being re-registered\n"
        assert MicroMetricLogger.get_registered_metrics() == {"density": int}

    def test_every_reregistration_warns(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each further registration of the same id prints the warning again."""
        for dtype in (float, int, str):
            MicroMetricLogger.register_metric("density", dtype)
        assert capsys.readouterr().out == (
            "Warning: Metric 'density' is being re-registered\n" * 2
        )
        assert MicroMetricLogger.get_registered_metrics() == {"density": str}

    def test_any_type_can_be_registered(self, fresh_logger: Logger) -> None:
        """Any type is accepted as a dtype and kept as given."""
        dtypes = {"f": float, "i": int, "s": str, "b": bool, "d": dict, "l": list, "o": object}
        for identifier, dtype in dtypes.items():
            MicroMetricLogger.register_metric(identifier, dtype)
        assert MicroMetricLogger.get_registered_metrics() == dtypes

    def test_get_registered_metrics_returns_a_copy(self, fresh_logger: Logger) -> None:
        """Editing the returned mapping leaves the registry unchanged."""
        MicroMetricLogger.register_metric("density", float)
        copy = MicroMetricLogger.get_registered_metrics()
        copy["intruder"] = str
        copy["density"] = int
        assert MicroMetricLogger.get_registered_metrics() == {"density": float}
        assert copy is not MicroMetricLogger._registered_metrics


# -- enabling ----------------------------------------------------------------------------------


class TestEnableMetrics:
    """``enable_metrics``, ``is_metric_enabled``, ``get_enabled_metrics``."""

    @pytest.fixture
    def logger(self, fresh_logger: Logger, tmp_path: Path) -> MicroMetricLogger:
        """A logger with a path and three registered ids, none enabled."""
        for identifier in ("a", "b", "c"):
            MicroMetricLogger.register_metric(identifier, float)
        return fresh_logger(log_path=str(tmp_path))

    def test_all_enables_every_registered_id(self, logger: MicroMetricLogger) -> None:
        """"all" enables every registered id."""
        logger.enable_metrics("all")
        assert logger.get_enabled_metrics() == {"a", "b", "c"}

    def test_list_enables_those_ids(self, logger: MicroMetricLogger) -> None:
        """A list enables exactly its (registered) ids."""
        logger.enable_metrics(["a", "c"])
        assert logger.get_enabled_metrics() == {"a", "c"}

    def test_set_enables_those_ids(self, logger: MicroMetricLogger) -> None:
        """A set enables exactly its (registered) ids."""
        logger.enable_metrics({"b"})
        assert logger.get_enabled_metrics() == {"b"}

    def test_unregistered_id_warns_with_set_repr(
        self, logger: MicroMetricLogger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unregistered id in a list is warned about with the set repr and not enabled."""
        capsys.readouterr()
        logger.enable_metrics(["a", "ghost"])
        assert capsys.readouterr().out == (
            "Warning: Attempting to enable unregistered metrics: {'ghost'}\n"
        )
        assert logger.get_enabled_metrics() == {"a"}

    def test_several_unregistered_ids_in_one_warning(
        self, logger: MicroMetricLogger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Several unregistered ids in a set are printed together, as one set, in one line."""
        capsys.readouterr()
        logger.enable_metrics({"b", "ghost", "phantom"})
        out = capsys.readouterr().out
        prefix = "Warning: Attempting to enable unregistered metrics: "
        assert out.startswith(prefix) and out.endswith("\n") and out.count("\n") == 1
        assert ast.literal_eval(out[len(prefix):-1]) == {"ghost", "phantom"}
        assert logger.get_enabled_metrics() == {"b"}

    def test_registered_only_list_is_silent(
        self, logger: MicroMetricLogger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A list of registered ids prints nothing."""
        capsys.readouterr()
        logger.enable_metrics(["a", "b"])
        logger.enable_metrics([])
        assert capsys.readouterr().out == ""

    @pytest.mark.parametrize(
        "metrics",
        [None, ("a", "b"), "a", "ALL", {"a": True}, frozenset({"a"}), 3],
        ids=["none", "tuple", "other-str", "ALL", "dict", "frozenset", "int"],
    )
    def test_none_or_other_types_enable_nothing(
        self, logger: MicroMetricLogger, capsys: pytest.CaptureFixture[str], metrics: Any
    ) -> None:
        """None, or anything but "all"/list/set, enables nothing and prints nothing."""
        logger.enable_metrics(["a"])
        capsys.readouterr()
        logger.enable_metrics(metrics)
        assert logger.get_enabled_metrics() == set()
        assert capsys.readouterr().out == ""

    def test_no_argument_enables_nothing(self, logger: MicroMetricLogger) -> None:
        """enable_metrics() with no argument enables nothing."""
        logger.enable_metrics(["a"])
        logger.enable_metrics()
        assert logger.get_enabled_metrics() == set()

    def test_new_list_replaces_the_enabled_set(self, logger: MicroMetricLogger) -> None:
        """A second call replaces the enabled set instead of adding to it (as the old API)."""
        logger.enable_metrics(["a", "b"])
        logger.enable_metrics(["c"])
        assert logger.get_enabled_metrics() == {"c"}

    def test_is_metric_enabled_returns_a_bool(self, logger: MicroMetricLogger) -> None:
        """is_metric_enabled returns True/False, the bool objects themselves."""
        logger.enable_metrics(["a"])
        assert logger.is_metric_enabled("a") is True
        assert logger.is_metric_enabled("b") is False
        assert logger.is_metric_enabled("ghost") is False

    def test_get_enabled_metrics_returns_a_copy(self, logger: MicroMetricLogger) -> None:
        """Editing the returned set leaves the logger's enabled set unchanged."""
        logger.enable_metrics(["a"])
        copy = logger.get_enabled_metrics()
        assert type(copy) is set
        copy.add("b")
        copy.discard("a")
        assert logger.get_enabled_metrics() == {"a"}
        assert logger.is_metric_enabled("a") is True
        assert logger.is_metric_enabled("b") is False


# -- logging: warnings -------------------------------------------------------------------------


class TestLogWarnings:
    """``log`` steps 1-2: the exact warnings, printed once per id per logger instance."""

    def test_cannot_log_without_path(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a log_path, log prints the exact warning and records nothing."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger()
        logger.log("m", 1.0)
        assert capsys.readouterr().out == _no_path("m")
        assert len(logger.log_queue) == 0
        assert logger.get_total_records_logged() == 0

    def test_path_check_comes_before_enabled_check(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a log_path, an unknown id gets the log_path warning, not the enabled one."""
        logger = fresh_logger()
        logger.log("ghost", 1.0)
        assert capsys.readouterr().out == _no_path("ghost")

    def test_not_enabled_warning(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A registered but disabled id prints the exact warning and records nothing."""
        MicroMetricLogger.register_metric("on", float)
        MicroMetricLogger.register_metric("off", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics=["on"])
        logger.log("off", 1.0)
        assert capsys.readouterr().out == _not_enabled("off")
        assert len(logger.log_queue) == 0
        assert logger.get_total_records_logged() == 0

    def test_unregistered_id_gets_not_enabled_warning(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An id that was never registered gets the same not-enabled warning."""
        logger = fresh_logger(log_path=str(tmp_path))
        logger.log("ghost", 1.0)
        assert capsys.readouterr().out == _not_enabled("ghost")

    def test_no_path_warning_once_per_id(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The log_path warning prints once per id: repeats are silent, another id prints."""
        logger = fresh_logger()
        for _ in range(3):
            logger.log("a", 1.0)
        logger.log("b", 1.0)
        logger.log("a", 1.0)
        assert capsys.readouterr().out == _no_path("a") + _no_path("b")

    def test_not_enabled_warning_once_per_id(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The not-enabled warning prints once per id: repeats are silent, another id prints."""
        logger = fresh_logger(log_path=str(tmp_path))
        logger.log("x", 1.0)
        logger.log("x", 2.0, {"layer_idx": 1})
        assert capsys.readouterr().out == _not_enabled("x")
        logger.log("y", 1.0)
        logger.log("x", 3.0)
        assert capsys.readouterr().out == _not_enabled("y")

    def test_fresh_singleton_warns_again(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After a singleton reset, the new logger prints the warnings again."""
        first = fresh_logger(log_path=str(tmp_path))
        first.log("x", 1.0)
        assert capsys.readouterr().out == _not_enabled("x")
        _reset_singleton()
        second = MicroMetricLogger(log_path=str(tmp_path))
        second.log("x", 1.0)
        second.log("x", 1.0)
        assert capsys.readouterr().out == _not_enabled("x")
        _reset_singleton()
        third = MicroMetricLogger()
        third.log("x", 1.0)
        assert capsys.readouterr().out == _no_path("x")


# -- logging: the queue ------------------------------------------------------------------------


class TestLogQueue:
    """``log`` step 5: one LogEvent appended to ``log_queue`` per recorded call."""

    @pytest.fixture
    def logger(self, fresh_logger: Logger, tmp_path: Path) -> MicroMetricLogger:
        """A logger with "m" registered and enabled."""
        MicroMetricLogger.register_metric("m", float)
        return fresh_logger(log_path=str(tmp_path), enabled_metrics="all")

    def test_appends_a_log_event(self, logger: MicroMetricLogger) -> None:
        """An enabled id queues one LogEvent carrying the metric, value and metadata."""
        metadata = {"layer_idx": 2, "head_idx": 5}
        logger.log("m", 0.75, metadata)
        assert len(logger.log_queue) == 1
        event = logger.log_queue[0]
        assert type(event) is LogEvent
        assert event.metric == "m"
        assert event.value == 0.75
        assert event.metadata == {"layer_idx": 2, "head_idx": 5}

    def test_timestamp_is_now(self, logger: MicroMetricLogger) -> None:
        """The event's timestamp is datetime.now() at the call."""
        before = datetime.now()
        logger.log("m", 1.0)
        after = datetime.now()
        stamp = logger.log_queue[0].timestamp
        assert type(stamp) is datetime
        assert before <= stamp <= after

    def test_metadata_none_becomes_empty_dict(self, logger: MicroMetricLogger) -> None:
        """Metadata None (or omitted) is stored as {}."""
        logger.log("m", 1.0, None)
        logger.log("m", 2.0)
        logger.log("m", 3.0, metadata=None)
        assert [e.metadata for e in logger.log_queue] == [{}, {}, {}]

    def test_values_kept_as_given(self, logger: MicroMetricLogger) -> None:
        """Scalar values (float, int, None, str, bool) are queued unchanged."""
        values = [0.5, 3, None, "text", True]
        for value in values:
            logger.log("m", value)
        queued = [e.value for e in logger.log_queue]
        assert queued == values
        assert [type(v) for v in queued] == [type(v) for v in values]

    def test_each_event_adds_one_to_the_total(self, logger: MicroMetricLogger) -> None:
        """Every recorded call adds exactly one to the total and one event to the queue."""
        for i in range(7):
            logger.log("m", float(i))
        assert logger.get_total_records_logged() == 7
        assert [e.value for e in logger.log_queue] == [float(i) for i in range(7)]

    def test_location_of_a_method(self, logger: MicroMetricLogger) -> None:
        """A call from a method is located as module.Class.method."""
        logger.log("m", 1.0)
        assert logger.log_queue[0].location == f"{__name__}.TestLogQueue.test_location_of_a_method"

    def test_location_of_another_class_method(self, logger: MicroMetricLogger) -> None:
        """A call from a model-like class's method names that class and method."""
        _Attention().forward(logger)
        assert logger.log_queue[0].location == f"{__name__}._Attention.forward"

    def test_location_of_a_plain_function(self, logger: MicroMetricLogger) -> None:
        """A call from a module-level function is located as module.function."""
        _log_from_function(logger)
        assert logger.log_queue[0].location == f"{__name__}._log_from_function"

    def test_location_names_this_test_module(self, logger: MicroMetricLogger) -> None:
        """The location starts with the caller's module name, never otel_sparse's."""
        logger.log("m", 1.0)
        location = logger.log_queue[0].location
        assert location.startswith(__name__ + ".")
        assert "otel_sparse" not in location


# -- logging: max_records ----------------------------------------------------------------------


class TestMaxRecords:
    """``log`` step 3 and its getters: a limit that stops recording silently."""

    def test_stops_at_the_limit(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Past max_records, log returns silently and counts nothing more."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=3)
        capsys.readouterr()
        for i in range(10):
            logger.log("m", float(i))
        assert capsys.readouterr().out == ""
        assert logger.get_total_records_logged() == 3
        assert [e.value for e in logger.log_queue] == [0.0, 1.0, 2.0]
        logger.flush()
        assert _values(_lines(_event_file(tmp_path))) == [0.0, 1.0, 2.0]

    def test_limit_counts_across_hand_offs(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """The limit holds across automatic flushes: the file gets exactly max_records lines."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(
            log_path=str(tmp_path), enabled_metrics="all", max_records=5, flush_every=2
        )
        for i in range(12):
            logger.log("m", float(i))
        logger.flush()
        assert _values(_lines(_event_file(tmp_path))) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert logger.get_total_records_logged() == 5

    def test_getters_before_and_after(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """get_max_records, is_max_records_reached and get_records_remaining track the total."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=4)
        assert logger.get_max_records() == 4
        assert logger.is_max_records_reached() is False
        assert logger.get_records_remaining() == 4
        logger.log("m", 1.0)
        assert logger.get_records_remaining() == 3
        for _ in range(5):
            logger.log("m", 1.0)
        assert logger.is_max_records_reached() is True
        assert logger.get_records_remaining() == 0
        assert logger.get_total_records_logged() == 4

    def test_no_limit(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Without max_records every call counts and get_records_remaining is None."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        for i in range(150):
            logger.log("m", float(i))
        assert logger.get_total_records_logged() == 150
        assert logger.get_max_records() is None
        assert logger.get_records_remaining() is None
        assert logger.is_max_records_reached() is False

    def test_zero_records_allowed(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """max_records=0 records nothing and is reached from the start."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=0)
        assert logger.is_max_records_reached() is True
        logger.log("m", 1.0)
        assert logger.get_total_records_logged() == 0
        assert len(logger.log_queue) == 0

    def test_disabled_warning_still_printed_when_limit_reached(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The not-enabled check (step 2) runs before the limit check (step 3)."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=1)
        logger.log("m", 1.0)
        logger.log("m", 2.0)
        capsys.readouterr()
        logger.log("off", 1.0)
        assert capsys.readouterr().out == _not_enabled("off")

    def test_drops_reported_once_through_logging(
        self,
        fresh_logger: Logger,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """max_records drops are reported once via the "otel_sparse" logger, never on stdout."""
        caplog.set_level(logging.DEBUG, logger="otel_sparse")
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=2)
        for i in range(6):
            logger.log("m", float(i))
        assert len(_drop_records(caplog, "max_records")) == 1
        for i in range(6):
            logger.log("m", float(i))
        assert len(_drop_records(caplog, "max_records")) == 1
        assert capsys.readouterr().out == ""


# -- logging: sampling -------------------------------------------------------------------------


class TestSampling:
    """``log`` step 4: keep each event with probability sampling_factor."""

    def test_zero_logs_nothing(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """sampling_factor 0 records nothing: empty queue, zero total, no file after flush."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", sampling_factor=0.0)
        for i in range(200):
            logger.log("m", float(i))
        assert logger.get_total_records_logged() == 0
        assert len(logger.log_queue) == 0
        logger.flush()
        assert not _event_file(tmp_path).exists()

    def test_one_logs_everything(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """sampling_factor 1 records every event."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", sampling_factor=1.0)
        for i in range(200):
            logger.log("m", float(i))
        assert logger.get_total_records_logged() == 200
        logger.flush()
        assert _values(_lines(_event_file(tmp_path))) == [float(i) for i in range(200)]

    def test_half_logs_about_half(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """sampling_factor 0.5 keeps roughly half of 2000 events, and only those are counted."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", sampling_factor=0.5)
        for i in range(2000):
            logger.log("m", float(i))
        kept = logger.get_total_records_logged()
        assert 800 <= kept <= 1200  # binomial(2000, 0.5): about 9 standard deviations
        logger.flush()
        values = _values(_lines(_event_file(tmp_path)))
        assert len(values) == kept
        assert values == sorted(values)  # kept events stay in order

    @pytest.mark.parametrize(("given", "stored"), [(2.0, 1.0), (-1.0, 0.0), (0.25, 0.25)])
    def test_clamped_to_unit_interval(
        self, fresh_logger: Logger, tmp_path: Path, given: float, stored: float
    ) -> None:
        """sampling_factor is clamped to [0, 1] and reported by get_sampling_factor."""
        logger = fresh_logger(log_path=str(tmp_path), sampling_factor=given)
        assert logger.sampling_factor == stored
        assert logger.get_sampling_factor() == stored

    def test_global_random_stream_untouched(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Sampling neither reads nor reseeds Python's global random stream."""
        random.seed(12345)
        expected = random.random()
        random.seed(12345)
        state = random.getstate()
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", sampling_factor=0.5)
        for i in range(500):
            logger.log("m", float(i))
        assert 0 < logger.get_total_records_logged() < 500  # sampling really ran
        assert random.getstate() == state
        assert random.random() == expected

    def test_researcher_seed_does_not_fix_the_sample(
        self, fresh_logger: Logger, tmp_path: Path
    ) -> None:
        """Reseeding the global stream between two runs does not replay the logger's choices."""
        MicroMetricLogger.register_metric("m", float)
        runs = []
        for run in range(2):
            _reset_singleton()
            random.seed(7)
            logger = MicroMetricLogger(
                log_path=str(tmp_path / f"run{run}"), enabled_metrics="all", sampling_factor=0.5
            )
            for i in range(200):
                logger.log("m", float(i))
            runs.append([e.value for e in logger.log_queue])
        assert runs[0] != runs[1]  # identical only with probability 2**-200 if independent

    def test_drops_reported_once_through_logging(
        self,
        fresh_logger: Logger,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Sampling drops are reported once via the "otel_sparse" logger, never on stdout."""
        caplog.set_level(logging.DEBUG, logger="otel_sparse")
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", sampling_factor=0.0)
        for i in range(50):
            logger.log("m", float(i))
        assert len(_drop_records(caplog, "sampling")) == 1
        assert capsys.readouterr().out == ""


# -- configuration after construction ----------------------------------------------------------


class TestConfigureLogging:
    """``configure_logging`` and the getters."""

    def test_sets_path_and_creates_directory(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """configure_logging sets log_path and creates the (nested) directory."""
        logger = fresh_logger()
        assert logger.is_logging_configured() is False
        log_dir = tmp_path / "x" / "y"
        logger.configure_logging(str(log_dir))
        assert logger.log_path == str(log_dir)
        assert log_dir.is_dir()
        assert logger.is_logging_configured() is True

    def test_enables_metrics(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """configure_logging applies enabled_metrics with the enable_metrics rules."""
        MicroMetricLogger.register_metric("m", float)
        MicroMetricLogger.register_metric("n", float)
        logger = fresh_logger()
        logger.configure_logging(str(tmp_path), ["m", "ghost"])
        assert capsys.readouterr().out == (
            "Warning: Attempting to enable unregistered metrics: {'ghost'}\n"
        )
        assert logger.get_enabled_metrics() == {"m"}
        logger.configure_logging(str(tmp_path), "all")
        assert logger.get_enabled_metrics() == {"m", "n"}

    def test_enabled_metrics_none_enables_nothing(
        self, fresh_logger: Logger, tmp_path: Path
    ) -> None:
        """configure_logging without enabled_metrics leaves nothing enabled."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.configure_logging(str(tmp_path))
        assert logger.get_enabled_metrics() == set()

    def test_sets_both_limits_by_position(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """configure_logging(path, enabled, max_records, sampling_factor) sets both limits."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger()
        logger.configure_logging(str(tmp_path), ["m"], 10, 0.3)
        assert logger.get_max_records() == 10
        assert logger.max_records == 10
        assert logger.get_sampling_factor() == 0.3
        assert logger.sampling_factor == 0.3

    def test_omitted_limits_reset_to_defaults(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Limits left out of configure_logging go back to no limit and sampling 1.0."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(
            log_path=str(tmp_path), enabled_metrics="all", max_records=3, sampling_factor=0.1
        )
        logger.configure_logging(str(tmp_path), "all")
        assert logger.get_max_records() is None
        assert logger.get_records_remaining() is None
        assert logger.get_sampling_factor() == 1.0

    def test_clamps_sampling_factor(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """configure_logging clamps sampling_factor to [0, 1] too."""
        logger = fresh_logger()
        logger.configure_logging(str(tmp_path), sampling_factor=3.0)
        assert logger.get_sampling_factor() == 1.0
        logger.configure_logging(str(tmp_path), sampling_factor=-2.0)
        assert logger.get_sampling_factor() == 0.0

    def test_resets_the_total(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """configure_logging resets the total to 0, so a reached limit can be logged past again."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=3)
        for i in range(5):
            logger.log("m", float(i))
        assert logger.is_max_records_reached() is True
        logger.configure_logging(str(tmp_path), ["m"], max_records=10)
        assert logger.get_total_records_logged() == 0
        assert logger.get_records_remaining() == 10
        assert logger.is_max_records_reached() is False
        for i in range(4):
            logger.log("m", float(i))
        assert logger.get_total_records_logged() == 4
        assert logger.get_records_remaining() == 6

    def test_logging_works_after_configuration(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A logger built without a path logs into the configured path once configured."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger()
        logger.log("m", 1.0)
        assert capsys.readouterr().out == _no_path("m")
        logger.configure_logging(str(tmp_path), ["m"])
        logger.log("m", 2.0, {"layer_idx": 0})
        assert capsys.readouterr().out == ""
        logger.flush()
        lines = _lines(_event_file(tmp_path))
        assert [json.loads(line)["value"] for line in lines] == [2.0]

    def test_new_path_receives_later_events(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """After configure_logging to another path, flushed events go to the new path."""
        MicroMetricLogger.register_metric("m", float)
        first, second = tmp_path / "first", tmp_path / "second"
        logger = fresh_logger(log_path=str(first), enabled_metrics="all")
        logger.log("m", 1.0)
        logger.flush()
        logger.configure_logging(str(second), "all")
        logger.log("m", 2.0)
        logger.flush()
        assert _values(_lines(_event_file(first))) == [1.0]
        assert _values(_lines(_event_file(second))) == [2.0]


# -- flushing ----------------------------------------------------------------------------------


class TestFlush:
    """``flush()``: queued events appended to ``<log_path>/micro_metrics.jsonl``."""

    @pytest.fixture
    def logger(self, fresh_logger: Logger, tmp_path: Path) -> MicroMetricLogger:
        """A logger with "m" registered and enabled, writing under tmp_path."""
        MicroMetricLogger.register_metric("m", float)
        return fresh_logger(log_path=str(tmp_path), enabled_metrics="all")

    def test_writes_the_event_file(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """flush writes every queued event, in order, to <log_path>/micro_metrics.jsonl."""
        for i in range(4):
            logger.log("m", float(i), {"layer_idx": i})
        logger.flush()
        lines = _lines(tmp_path / "micro_metrics.jsonl")
        assert [json.loads(line)["metadata"] for line in lines] == [
            {"layer_idx": i} for i in range(4)
        ]
        assert _values(lines) == [0.0, 1.0, 2.0, 3.0]

    def test_one_event_file_per_process(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """A single process writes its events to micro_metrics.jsonl and no other event file."""
        logger.log("m", 1.0)
        logger.flush()
        event_files = sorted(n for n in os.listdir(tmp_path) if n.startswith("micro_metrics"))
        assert event_files == ["micro_metrics.jsonl"]

    def test_empties_the_queue(self, logger: MicroMetricLogger) -> None:
        """flush leaves log_queue empty (and still a deque of maxlen 10000)."""
        for i in range(3):
            logger.log("m", float(i))
        logger.flush()
        assert len(logger.log_queue) == 0
        assert isinstance(logger.log_queue, collections.deque)
        assert logger.log_queue.maxlen == 10000

    def test_empty_queue_creates_no_file(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """flush with an empty queue creates no event file."""
        logger.flush()
        assert not _event_file(tmp_path).exists()

    def test_without_path_does_nothing(self, fresh_logger: Logger) -> None:
        """flush on a logger without a path returns quietly with an empty queue."""
        logger = fresh_logger()
        logger.flush()
        assert len(logger.log_queue) == 0

    def test_updates_last_flush_time(self, logger: MicroMetricLogger) -> None:
        """flush sets last_flush_time to the current epoch time."""
        logger.last_flush_time = 0.0
        logger.log("m", 1.0)
        before = time.time()
        logger.flush()
        after = time.time()
        assert type(logger.last_flush_time) is float
        assert before <= logger.last_flush_time <= after

    def test_appends_across_flushes(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """A second flush appends after the first one's lines."""
        logger.log("m", 1.0)
        logger.log("m", 2.0)
        logger.flush()
        logger.log("m", 3.0)
        logger.flush()
        logger.flush()
        assert _values(_lines(_event_file(tmp_path))) == [1.0, 2.0, 3.0]

    def test_appends_to_an_existing_file(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """flush appends to an event file left by an earlier run instead of replacing it."""
        earlier = json.dumps({"timestamp": "2020-01-01T00:00:00", "metric": "m", "value": 9.0,
                              "metadata": {}, "location": "old.run"})
        _event_file(tmp_path).write_text(earlier + "\n", encoding="utf-8")
        logger.log("m", 1.0)
        logger.flush()
        lines = _lines(_event_file(tmp_path))
        assert lines[0] == earlier
        assert _values(lines) == [9.0, 1.0]


    def test_fresh_singleton_appends_to_previous_run_file(
        self, fresh_logger: Logger, tmp_path: Path
    ) -> None:
        """A second run (fresh singleton) in the same log_path appends after the first run."""
        MicroMetricLogger.register_metric("m", float)
        first = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        first.log("m", 1.0)
        first.flush()
        _reset_singleton()
        second = MicroMetricLogger(log_path=str(tmp_path), enabled_metrics="all")
        second.log("m", 2.0)
        second.flush()
        assert _values(_lines(_event_file(tmp_path))) == [1.0, 2.0]


class TestAutoFlush:
    """``log`` step 5: the queue is flushed when it holds ``flush_every`` events."""

    @pytest.fixture
    def logger(
        self, fresh_logger: Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> MicroMetricLogger:
        """A logger with flush_every=5; the periodic write is pushed out of the way."""
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", HOLD_EVENTS_S)
        MicroMetricLogger.register_metric("m", float)
        return fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=5)

    def test_below_threshold_stays_queued(self, logger: MicroMetricLogger) -> None:
        """Fewer than flush_every events stay in the queue."""
        for i in range(4):
            logger.log("m", float(i))
        assert [e.value for e in logger.log_queue] == [0.0, 1.0, 2.0, 3.0]

    def test_queue_empty_right_after_threshold(self, logger: MicroMetricLogger) -> None:
        """The call that fills the queue to flush_every leaves it empty."""
        for i in range(5):
            logger.log("m", float(i))
        assert len(logger.log_queue) == 0

    def test_flushed_events_reach_the_file(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """The automatically flushed events appear in the event file, in order."""
        for i in range(5):
            logger.log("m", float(i))
        lines = _wait_for_lines(_event_file(tmp_path), 5)
        assert _values(lines) == [0.0, 1.0, 2.0, 3.0, 4.0]

    def test_counting_restarts_after_a_flush(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """After an automatic flush the next events queue up again until the next threshold."""
        for i in range(7):
            logger.log("m", float(i))
        assert [e.value for e in logger.log_queue] == [5.0, 6.0]
        for i in range(7, 10):
            logger.log("m", float(i))
        assert len(logger.log_queue) == 0
        lines = _wait_for_lines(_event_file(tmp_path), 10)
        assert _values(lines) == [float(i) for i in range(10)]

    def test_nested_metadata_reaches_the_file(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Automatically flushed events with nested metadata are written too, unchanged."""
        metadata = [{"layer_idx": i, "heads": [i, i + 1], "cfg": {"on": True}} for i in range(5)]
        for i in range(5):
            logger.log("m", float(i), metadata[i])
        lines = _wait_for_lines(_event_file(tmp_path), 5)
        assert [json.loads(line)["metadata"] for line in lines] == metadata

    def test_updates_last_flush_time(self, logger: MicroMetricLogger) -> None:
        """An automatic flush updates last_flush_time."""
        logger.last_flush_time = 0.0
        before = time.time()
        for i in range(5):
            logger.log("m", float(i))
        assert before <= logger.last_flush_time <= time.time()


class TestGarbageCollection:
    """Garbage collection of the logger flushes its queue."""

    @pytest.fixture(autouse=True)
    def _hold_events(self, fresh_logger: Logger, monkeypatch: pytest.MonkeyPatch) -> None:
        """Push the periodic write out of the way: only a flush may write."""
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", HOLD_EVENTS_S)

    def test_collection_flushes(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Dropping the last reference (after a reset) and gc.collect() writes the queued events."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        for i in range(3):
            logger.log("m", float(i), {"layer_idx": i})
        assert not _event_file(tmp_path).exists()
        _reset_singleton()
        del logger
        gc.collect()
        lines = _wait_for_lines(_event_file(tmp_path), 3)
        assert _values(lines) == [0.0, 1.0, 2.0]

    def test_manual_del_flushes(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """Calling logger.__del__() writes the queued events at once and empties the queue."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.log("m", 42.0)
        logger.__del__()
        assert _values(_lines(_event_file(tmp_path))) == [42.0]
        assert len(logger.log_queue) == 0

    def test_logger_usable_after_manual_del(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """After a manual __del__() the same logger keeps logging and flushing."""
        MicroMetricLogger.register_metric("m", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.log("m", 1.0)
        logger.__del__()
        logger.log("m", 2.0)
        assert logger.get_total_records_logged() == 2
        logger.flush()
        assert _values(_lines(_event_file(tmp_path))) == [1.0, 2.0]


# -- the event file ----------------------------------------------------------------------------


class TestEventFileFormat:
    """One JSON object a line, byte for byte what the old logger wrote."""

    @pytest.fixture
    def logger(self, fresh_logger: Logger, tmp_path: Path) -> MicroMetricLogger:
        """A logger with a few ids of different dtypes, all enabled."""
        for identifier, dtype in (("density", float), ("count", int), ("label", str),
                                  ("blob", dict)):
            MicroMetricLogger.register_metric(identifier, dtype)
        return fresh_logger(log_path=str(tmp_path), enabled_metrics="all")

    def test_lines_byte_for_byte(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Each line equals json.dumps of the five contract keys, timestamp in isoformat()."""
        logger.log("density", 0.1, {"layer_idx": 0})
        logger.log("count", 7)
        logger.log("label", "héllo ✓", {"note": "ünïcode", "k": [1, 2]})
        logger.log("density", None, {"layer_idx": 1, "head_idx": 3})
        logger.log("density", 1e-300, {"layer_idx": 2})
        logger.log("blob", {"a": [1, 2.5]}, {"ok": True})
        logger.log("density", 0.30000000000000004, {"layer_idx": -1})
        events = list(logger.log_queue)
        expected = "".join(_contract_line(e) + "\n" for e in events).encode("ascii")
        logger.flush()
        assert _event_file(tmp_path).read_bytes() == expected

    def test_lines_equal_old_asdict_dump(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Each line equals the old writer's json.dumps(asdict(event)), timestamp in isoformat."""
        for i in range(3):
            logger.log("density", i / 3, {"layer_idx": i})
        events = list(logger.log_queue)
        logger.flush()
        assert _lines(_event_file(tmp_path)) == [_old_line(e) for e in events]

    def test_key_order_and_types(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Each line is one object with exactly the five keys in order, with the right values."""
        before = datetime.now()
        logger.log("density", 0.5, {"layer_idx": 4})
        logger.flush()
        (line,) = _lines(_event_file(tmp_path))
        record = json.loads(line)
        assert list(record) == ["timestamp", "metric", "value", "metadata", "location"]
        stamp = datetime.fromisoformat(record["timestamp"])
        assert before <= stamp <= datetime.now()
        assert record["metric"] == "density"
        assert record["value"] == 0.5
        assert record["metadata"] == {"layer_idx": 4}
        assert record["location"] == f"{__name__}.TestEventFileFormat.test_key_order_and_types"

    def test_equal_metadata_values_keep_their_spelling(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Metadata equal in Python but not in JSON (0.0 vs -0.0, 1 vs True) is written exactly."""
        for metadata in ({"offset": 0.0}, {"offset": -0.0}, {"heads": (1, 2)},
                         {"heads": (True, 2)}, {"x": 1}, {"x": True}, {"x": 1.0}):
            logger.log("density", 0.5, metadata)
        events = list(logger.log_queue)
        logger.flush()
        assert _lines(_event_file(tmp_path)) == [_contract_line(e) for e in events]

    def test_hand_queued_event_written_as_is(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """A LogEvent put on log_queue directly is written by flush in the same format."""
        event = LogEvent(datetime(2025, 3, 4, 5, 6, 7), "density", 0.125, {"layer_idx": 1},
                         "model.Attn.forward")
        logger.log_queue.append(event)
        logger.flush()
        assert _event_file(tmp_path).read_text(encoding="utf-8") == (
            '{"timestamp": "2025-03-04T05:06:07", "metric": "density", "value": 0.125, '
            '"metadata": {"layer_idx": 1}, "location": "model.Attn.forward"}\n'
        )

    def test_nested_metadata_round_trips(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Nested metadata (dicts, lists, None, bools) comes back identical from json.loads."""
        metadata = {
            "layer_idx": 3,
            "heads": [0, 1, {"deep": {"x": None, "ok": True, "no": False}}],
            "flags": {"t": True, "f": False, "n": None},
            "empty": {},
            "grid": [[1.5, -2], [], [None, "s"]],
            "text": "quote \" and backslash \\",
        }
        logger.log("density", 0.5, metadata)
        logger.flush()
        (line,) = _lines(_event_file(tmp_path))
        loaded = json.loads(line)["metadata"]
        assert loaded == metadata
        assert repr(loaded) == repr(metadata)  # same key order, True stays True, not 1

    def test_non_finite_values_as_python_json(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """NaN and infinities are written as json.dumps writes them: NaN, Infinity, -Infinity."""
        for value in (math.nan, math.inf, -math.inf):
            logger.log("density", value, {"layer_idx": 0})
        events = list(logger.log_queue)
        logger.flush()
        lines = _lines(_event_file(tmp_path))
        assert lines == [_contract_line(e) for e in events]
        assert ['"value": NaN,' in lines[0], '"value": Infinity,' in lines[1],
                '"value": -Infinity,' in lines[2]] == [True, True, True]
        values = _values(lines)
        assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


# -- who reads that file -----------------------------------------------------------------------


def _benchmark_averages(path: Path) -> tuple[dict[str, float], dict[tuple[str, int], float]]:
    """What sparse-attention-hub's benchmark scripts do: read line by line, average per metric."""
    per_metric: dict[str, list[float]] = defaultdict(list)
    per_layer: dict[tuple[str, int], list[float]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line.strip())
            metric = entry.get("metric")
            if metric in ("research_attention_density", "research_attention_output_error"):
                per_metric[metric].append(entry["value"])
                per_layer[(metric, entry["metadata"]["layer_idx"])].append(entry["value"])
    return (
        {m: sum(v) / len(v) for m, v in per_metric.items()},
        {k: sum(v) / len(v) for k, v in per_layer.items()},
    )


class TestBenchmarkParser:
    """The benchmark scripts' reader gets the right averages from the event file."""

    LAYERS = 4
    STEPS = 6

    def _log_run(self, logger: MicroMetricLogger) -> tuple[dict, dict]:
        """Log a fake run; return the per-metric and per-(metric, layer) averages logged."""
        self.sequence: list[float] = []
        logged: dict[str, list[float]] = defaultdict(list)
        by_layer: dict[tuple[str, int], list[float]] = defaultdict(list)
        for step in range(self.STEPS):
            for layer in range(self.LAYERS):
                density = (step * self.LAYERS + layer + 1) / 97
                error = 0.01 * (layer + 1) + step / 1000
                for metric, value in (("research_attention_density", density),
                                      ("research_attention_output_error", error)):
                    logger.log(metric, value, metadata={"layer_idx": layer})
                    logged[metric].append(value)
                    self.sequence.append(value)
                    by_layer[(metric, layer)].append(value)
        return (
            {m: sum(v) / len(v) for m, v in logged.items()},
            {k: sum(v) / len(v) for k, v in by_layer.items()},
        )

    def _register(self) -> None:
        MicroMetricLogger.register_metric("research_attention_density", float)
        MicroMetricLogger.register_metric("research_attention_output_error", float)

    def test_averages_per_metric_and_layer(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """After flush, per-metric and per-layer averages read back equal those logged."""
        self._register()
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        expected = self._log_run(logger)
        logger.flush()
        assert _benchmark_averages(_event_file(tmp_path)) == expected

    def test_averages_with_automatic_flushes(self, fresh_logger: Logger, tmp_path: Path) -> None:
        """With a small flush_every, a final flush() leaves every event in the file, in order."""
        self._register()
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=7)
        expected = self._log_run(logger)
        logger.flush()
        lines = _lines(_event_file(tmp_path))
        assert _values(lines) == self.sequence
        assert _benchmark_averages(_event_file(tmp_path)) == expected

    def test_averages_after_garbage_collection(
        self, fresh_logger: Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run that never calls flush() leaves a complete file once the logger is collected."""
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", HOLD_EVENTS_S)
        self._register()
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=10)
        expected = self._log_run(logger)
        _reset_singleton()
        del logger
        gc.collect()
        _wait_for_lines(_event_file(tmp_path), 2 * self.LAYERS * self.STEPS)
        assert _benchmark_averages(_event_file(tmp_path)) == expected


class TestControlCharactersInWarnings:
    """A newline or control character in an identifier is escaped in the stdout line."""

    def test_not_enabled_and_no_path_lines_stay_one_line(
        self, fresh_logger: Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """'a\\nb' prints as a\\\\nb: one line each, the contract's words around it."""
        logger = fresh_logger()
        logger.log("ghost\nWarning: forged\x1b[2J", 1.0)
        logger.configure_logging(str(tmp_path), [])
        logger.log("other\r\n", 1.0)
        logger.log("plain-id", 1.0)
        assert capsys.readouterr().out == (
            _no_path("ghost\\nWarning: forged\\x1b[2J") + _not_enabled("other\\r\\n")
            + _not_enabled("plain-id")
        )

    def test_reregistered_line_is_escaped(
        self, fresh_logger: Logger, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The re-registration warning escapes too."""
        MicroMetricLogger.register_metric("m\nx", float)
        MicroMetricLogger.register_metric("m\nx", float)
        assert capsys.readouterr().out == "Warning: Metric 'm\\nx' is being re-registered\n"
