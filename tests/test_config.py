"""Settings resolve argument, then OTEL_SPARSE_*, then OTEL_*, then default; bad values warn once."""

from __future__ import annotations

import pytest

from otel_sparse import config
from otel_sparse.config import Settings, parse_exporters
from otel_sparse.resource import ProcessIdentity, resolve_run_id


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    config._warned_env.clear()


class TestSettings:
    """Resolution order and validation of every knob."""

    def test_defaults_without_environment(self) -> None:
        """Nothing set: local JSONL, 10 s exports, cumulative, room for 128x128 series."""
        s = Settings.from_env({})
        assert s.exporters == ("jsonl",)
        assert (s.export_interval_s, s.temporality, s.namespace) == (10.0, "cumulative",
                                                                      "sparse_attention")
        assert s.max_series >= 128 * 128

    def test_otel_sparse_variable_beats_standard_one(self) -> None:
        """OTEL_SPARSE_EXPORT_INTERVAL wins over OTEL_METRIC_EXPORT_INTERVAL."""
        env = {"OTEL_SPARSE_EXPORT_INTERVAL": "500", "OTEL_METRIC_EXPORT_INTERVAL": "60000"}
        assert Settings.from_env(env).export_interval_s == 0.5
        assert Settings.from_env({"OTEL_METRIC_EXPORT_INTERVAL": "60000"}).export_interval_s == 60

    def test_exporters_argument_beats_environment(self) -> None:
        """Exporters chosen in code win over OTEL_SPARSE_EXPORTERS and OTEL_METRICS_EXPORTER."""
        env = {"OTEL_SPARSE_EXPORTERS": "otlp", "OTEL_METRICS_EXPORTER": "console"}
        assert Settings.from_env(env, exporters=("otlp_file",)).exporters == ("otlp_file",)
        assert Settings.from_env(env).exporters == ("otlp",)
        assert Settings.from_env({"OTEL_METRICS_EXPORTER": "console"}).exporters == ("console",)
        assert Settings.from_env({"OTEL_SPARSE_EXPORTERS": "none"}).exporters == ()

    @pytest.mark.parametrize(
        ("name", "raw", "field", "default"),
        [
            ("OTEL_SPARSE_EXPORT_INTERVAL", "-5", "export_interval_s", 10.0),
            ("OTEL_SPARSE_EXPORT_INTERVAL", "soon", "export_interval_s", 10.0),
            ("OTEL_SPARSE_TEMPORALITY", "sideways", "temporality", "cumulative"),
            ("OTEL_SPARSE_MAX_SERIES", "0", "max_series", 20000),
            ("OTEL_SPARSE_EXPORTERS", "jsonl,kafka", "exporters", ("jsonl",)),
            ("OTEL_SPARSE_WRITE_DELAY", "nan", "write_delay_s", 1.0),
        ],
    )
    def test_bad_value_warns_once_and_falls_back(
        self, caplog: pytest.LogCaptureFixture, name: str, raw: str, field: str, default: object
    ) -> None:
        """A bad value logs one warning naming the variable; the default applies."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            for _ in range(3):
                assert getattr(Settings.from_env({name: raw}), field) == default
        warnings = [r for r in caplog.records if name in r.getMessage()]
        assert len(warnings) == 1

    def test_parse_exporters_rejects_unknown_names(self) -> None:
        """In code, an unknown exporter name is a clear error."""
        with pytest.raises(ValueError, match="kafka"):
            parse_exporters("jsonl, kafka")
        assert parse_exporters(" OTLP , jsonl,otlp") == ("otlp", "jsonl")


class TestIdentity:
    """Run id, rank and process: the resource attributes of every point."""

    def test_run_id_resolution_order(self) -> None:
        """OTEL_SPARSE_RUN_ID, then TORCHELASTIC_RUN_ID, then one generated id per process."""
        both = {"OTEL_SPARSE_RUN_ID": "mine", "TORCHELASTIC_RUN_ID": "elastic"}
        assert resolve_run_id(both) == "mine"
        assert resolve_run_id({"TORCHELASTIC_RUN_ID": "elastic"}) == "elastic"
        generated = resolve_run_id({})
        assert generated == resolve_run_id({}) and len(generated) > 10

    def test_torchrun_placeholder_run_id_is_not_used(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """TORCHELASTIC_RUN_ID=none (torchrun without --rdzv-id) is shared by every such job."""
        monkeypatch.setattr(config, "_warned_none_run_id", False)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            run_id = resolve_run_id({"TORCHELASTIC_RUN_ID": "none"})
        assert run_id != "none"
        assert any("OTEL_SPARSE_RUN_ID" in r.getMessage() for r in caplog.records)

    def test_resource_attributes(self) -> None:
        """Ranks from torchrun's variables; a unique instance id per identity."""
        env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "OTEL_SPARSE_RUN_ID": "r1"}
        a, b = ProcessIdentity.current(env), ProcessIdentity.current(env)
        attrs = a.resource().attributes
        assert (attrs["rank"], attrs["world.size"], attrs["local.rank"], attrs["run.id"]) == (
            3, 8, 1, "r1")
        assert attrs["service.name"] == "otel-sparse" and attrs["host.name"]
        assert a.instance_id != b.instance_id
        assert a.file_suffix(is_fork_child=False) == f".rank3.pid{a.pid}"

    def test_otel_resource_attributes_override(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over our defaults."""
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "run.id=from-env,team=sparse")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "llama-eval")
        attrs = ProcessIdentity.current({"OTEL_SPARSE_RUN_ID": "r1"}).resource().attributes
        assert (attrs["run.id"], attrs["team"], attrs["service.name"]) == (
            "from-env", "sparse", "llama-eval")
