"""JSON log lines (``gateway/json_log.py``): one parseable object a record, whatever it holds."""

from __future__ import annotations

import io
import json
import logging
from decimal import Decimal

import pytest

from gateway import json_log
from gateway.json_log import FIELDS, JsonFormatter, say, use_json


def record(msg: str, *args: object, fields: object = None, exc: bool = False) -> logging.LogRecord:
    rec = logging.LogRecord("gateway.cost", logging.INFO, __file__, 1, msg, args, None)
    if fields is not None:
        setattr(rec, FIELDS, fields)
    if exc:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            import sys

            rec.exc_info = sys.exc_info()
    return rec


def test_a_record_is_one_line_of_json_with_its_fields() -> None:
    line = JsonFormatter().format(
        record("Cost | tenant=%s cost=%s", "a\nb", "$1.5", fields={"tenantId": "a\nb", "costUsd": "1.500000"})
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "Cost | tenant=a\nb cost=$1.5"
    assert (parsed["level"], parsed["logger"], parsed["tenantId"], parsed["costUsd"]) == (
        "INFO",
        "gateway.cost",
        "a\nb",
        "1.500000",
    )
    assert parsed["time"].endswith("Z") and parsed["time"][10] == "T"  # UTC, as the text lines


def test_a_field_never_replaces_the_lines_own_and_odd_values_do_not_break_it() -> None:
    fields = {"message": "forged", "level": "DEBUG", "amount": Decimal("0.1"), "surrogate": "\ud800"}
    parsed = json.loads(JsonFormatter().format(record("real", fields=fields)))
    assert (parsed["message"], parsed["level"]) == ("real", "INFO")
    assert parsed["amount"] == "0.1"  # money as text, never a float
    assert parsed["surrogate"] == "\ud800"


def test_a_field_that_cannot_be_written_leaves_the_line_without_it() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    circular: list[object] = []
    circular.append(circular)
    for odd in (Broken(), circular):
        parsed = json.loads(JsonFormatter().format(record("kept", fields={"odd": odd, "bad": "\ud800"})))
        assert parsed["message"] == "kept" and parsed["fieldsError"] and "odd" not in parsed


def test_a_traceback_stays_in_its_line() -> None:
    line = JsonFormatter().format(record("failed", exc=True))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["exception"].startswith("Traceback") and "ValueError: bad\nthing" in parsed["exception"]


def test_a_refusal_to_start_is_a_json_line_when_the_logs_are(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_log, "structured", False)  # put back after use_json()
    say("llm-gateway: invalid configuration: port: not a number")
    assert capsys.readouterr().err == "llm-gateway: invalid configuration: port: not a number\n"
    assert not caplog.records
    logger = logging.getLogger("test.json_log")  # not the root: pytest's own handlers live there
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        use_json(logger)
        assert isinstance(handler.formatter, JsonFormatter) and json_log.structured
    finally:
        logger.removeHandler(handler)
    say("llm-gateway: invalid configuration: port: not a number")
    [logged] = caplog.records
    parsed = json.loads(JsonFormatter().format(logged))
    assert parsed["message"] == "llm-gateway: invalid configuration: port: not a number"
    assert (parsed["level"], parsed["logger"]) == ("ERROR", "gateway")
    assert capsys.readouterr().err == ""
