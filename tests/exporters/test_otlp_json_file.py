"""The OTLP-JSON lines file, readable by the collector's file receiver and by protobuf."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from otel_sparse import MicroMetricLogger

DENSITY = "research_attention_density"


class TestOtlpJsonFile:
    """Each line is an ExportMetricsServiceRequest in OTLP/JSON."""

    def test_lines_parse_back_into_requests_with_the_same_points(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Parsing a line with protobuf gives the histogram points that were logged."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              exporters=["otlp_file"])
        for layer in range(3):
            logger.log(DENSITY, 0.125 * (layer + 1), {"layer_idx": layer, "head_idx": 0})
        logger.close()
        lines = (tmp_path / "otlp" / "metrics.jsonl").read_text().splitlines()
        assert lines
        request = Parse(lines[-1], ExportMetricsServiceRequest())
        (rm,) = request.resource_metrics
        attrs = {a.key: a.value for a in rm.resource.attributes}
        assert attrs["run.id"].string_value
        metrics = {m.name: m for m in rm.scope_metrics[0].metrics}
        hist = metrics[f"sparse_attention.{DENSITY}"].histogram
        assert hist.aggregation_temporality == 2  # CUMULATIVE
        sums = {
            {a.key: a.value.int_value for a in p.attributes}["layer"]: (p.count, p.sum)
            for p in hist.data_points
        }
        assert sums == {0: (1, 0.125), 1: (1, 0.25), 2: (1, 0.375)}

    def test_json_uses_otlp_conventions(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """camelCase fields, integer enums and 64-bit integers as strings (OTLP/JSON spec)."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              exporters=["otlp_file"])
        logger.log(DENSITY, 0.5)
        logger.close()
        doc = json.loads((tmp_path / "otlp" / "metrics.jsonl").read_text().splitlines()[-1])
        metric = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
        point = metric["histogram"]["dataPoints"][0]
        assert metric["histogram"]["aggregationTemporality"] == 2
        assert isinstance(point["timeUnixNano"], str) and point["count"] == "1"

    def test_unchanged_state_is_not_written_again(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Flushes without new data add no line; new data adds exactly one."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              exporters=["otlp_file"])
        logger.log(DENSITY, 0.5)
        logger.flush()
        logger.flush()
        logger.log(DENSITY, 0.25)
        logger.flush()
        logger.close()
        lines = (tmp_path / "otlp" / "metrics.jsonl").read_text().splitlines()
        counts = [
            json.loads(line)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"]
            ["dataPoints"][0]["count"]
            for line in lines
        ]
        assert counts == ["1", "2"]
