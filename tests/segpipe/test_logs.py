"""Structured logs: JSON lines carry the request id, plain lines stay readable."""

from __future__ import annotations

import json
import logging

import pytest

from segpipe.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_request_ids(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", fmt="json")
    logging.getLogger("consumers.worker").info("result %s: ok", "r-42", extra={"request_id": "r-42", "offset": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"request_id": "r-43"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["request_id"] == "r-42" and lines[0]["offset"] == 7 and lines[0]["message"] == "result r-42: ok"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "consumers.worker" and lines[0]["ts"].endswith("Z")
    assert lines[1]["request_id"] == "r-43" and "ValueError: boom" in lines[1]["exc"]


def test_plain_format_and_level_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("LOG_FORMAT", "plain")
    configure_logging()
    logging.getLogger("a").info("hidden")
    logging.getLogger("a").warning("shown %d", 1)
    err = capsys.readouterr().err
    assert "hidden" not in err and "WARNING a: shown 1" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])
