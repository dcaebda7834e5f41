"""The processes' log: the broker client's records capped at WARNING, one line each."""

from __future__ import annotations

import logging
import sys

from rabbitry.cli.logs import ClientNoise, configure


def _record(name: str, level: int, *, failing: bool = False) -> logging.LogRecord:
    exc_info = None
    if failing:
        try:
            raise ConnectionError("reset by peer")
        except ConnectionError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, "reader %s stopped", ("x",), exc_info)


def test_a_client_error_with_a_traceback_becomes_a_warning_of_one_line() -> None:
    record = _record("aiormq.connection", logging.ERROR, failing=True)
    assert ClientNoise().filter(record)
    assert (record.levelno, record.levelname) == (logging.WARNING, "WARNING")
    assert record.exc_info is None
    assert record.getMessage() == "reader x stopped (ConnectionError: reset by peer)"
    formatted = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert formatted == "WARNING reader x stopped (ConnectionError: reset by peer)"


def test_records_of_rabbitry_and_other_libraries_are_left_as_they_are() -> None:
    for name in ("rabbitry.messaging.connection", "aio_pikachu", "asyncio"):
        record = _record(name, logging.ERROR, failing=True)
        assert ClientNoise().filter(record)
        assert record.levelno == logging.ERROR and record.exc_info is not None


def test_client_warnings_and_below_keep_their_level() -> None:
    record = _record("aio_pika.robust_connection", logging.INFO)
    assert ClientNoise().filter(record)
    assert record.levelno == logging.INFO and record.getMessage() == "reader x stopped"


def test_even_debug_leaves_out_the_sqlite_drivers_statements_and_their_parameters() -> None:
    driver = logging.getLogger("aiosqlite")
    root = logging.getLogger()
    level, handlers = driver.level, list(root.handlers)
    filters = {h: list(h.filters) for h in handlers}
    try:
        configure(logging.DEBUG)
        assert not driver.isEnabledFor(logging.DEBUG)  # each statement, with its parameters
        assert driver.isEnabledFor(logging.INFO)
        assert all(any(isinstance(f, ClientNoise) for f in h.filters) for h in root.handlers)
    finally:
        driver.setLevel(level)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler, kept in filters.items():
            handler.filters[:] = kept
