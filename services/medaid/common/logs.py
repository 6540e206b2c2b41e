"""Structured JSON logs. Id numbers and names never appear in clear text.

A line written while a request is handled carries that request's `trace_id` and, once known, its
`request_id` (msgid, request or transfer id), and `origin_id` when it was made for another request
further up (a 2207's msgid at the wallet): see medaid.common.tracing."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from medaid.common import errors, tracing
from medaid.common.idnumber import mask, mask_name

# The check character as typed, too: card readers and hospital systems send a lower-case `x`.
_ID_RE = re.compile(r"(?<![0-9])([1-9][0-9]{5})([0-9]{8})([0-9]{3}[0-9Xx])(?![0-9Xx])")
# A first-generation number (GB 11643-1989, 15 digits: division, YYMMDD, sequence), still on old cards
# and in old records: only where it stands alone (not inside an id of letters and digits) and its
# middle reads as a date, so that amounts and generated ids are left as they are.
_OLD_ID_RE = re.compile(r"(?<![0-9A-Za-z])([1-8][0-9]{5})([0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]))"
                        r"([0-9]{3})(?![0-9A-Za-z])")
_ID_LEN = 15  # a text shorter than this cannot hold an id number
# redis-py names a pipeline's failed command with its first arguments ("Command # 1 (HSET gw:{file:…}
# inst H1301… filename <as sent> data…) of pipeline caused error: …"): keys, and values a message or a
# form sent (a file's name, a person's). The line keeps the command and the error, never the arguments.
_PIPELINE_ERROR = "of pipeline caused error"
_PIPELINE_COMMAND = re.compile(r"(Command # [0-9]+ \()(\S+)[^\n]*?(\) of pipeline caused error)")
# A traceback's text holds what the failed code read as the exception words it (a value that did not
# parse: a name as much as an id number) and the source lines it ran: Chinese there is a person's name or a
# literal, told apart by nothing. Each run of Han characters (a name's middle dot within) keeps its first.
_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff][\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff·•]*")
_PERSONAL_KEYS = {"id_number", "helper", "member", "patient", "holder", "relative", "name"}
# Ids a caller chose (a request id, a msgid, an infno): a well-formed one is letters, digits and . _ : -
# (idempotency.REQUEST_ID_RE), and a misfilled one may hold anything, a patient's name included. Each
# other character is written `*`, so a refused id is still recognisable and no name is in clear.
_CALLER_ID_KEYS = {"request_id", "origin_id", "msgid", "infno"}
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9._:*\-]")
# One encoder for every line: json.dumps(…, ensure_ascii=False) would build a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False).encode
_LEVELS = {level: logging.getLevelName(level).lower()
           for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)}


def _masked(m: re.Match[str]) -> str:
    return m.group(1) + "********" + m.group(3)


def _masked_old(m: re.Match[str]) -> str:
    return m.group(1) + "******" + m.group(3)


def scrub(text: str, keep: frozenset[str] = frozenset()) -> str:
    """Mask anything shaped like an id number inside free text: 18 characters, or 15 digits (old cards),
    but the id numbers in `keep`; of a Redis pipeline's error, keep the failed command's name only."""
    if len(text) < _ID_LEN:
        return text
    if _PIPELINE_ERROR in text:
        text = _PIPELINE_COMMAND.sub(r"\1\2 …\3", text)
    if not keep:
        return _OLD_ID_RE.sub(_masked_old, _ID_RE.sub(_masked, text))
    return _OLD_ID_RE.sub(lambda m: m.group(0) if m.group(0) in keep else _masked_old(m),
                          _ID_RE.sub(lambda m: m.group(0) if m.group(0) in keep else _masked(m), text))


def _caller_id(text: str) -> str:
    return _NOT_ID_CHAR.sub("*", scrub(text))


def _mask_value(key: str, value: Any) -> Any:
    """A field's value as written: a text by the rules of its key, a list's items (and a tuple's) by
    their field's key, an object's keys as free text and its values by their own keys, all the way down."""
    if isinstance(value, str):
        if key == "name":
            return mask_name(value)
        if key in _PERSONAL_KEYS and len(value) == 18:
            return mask(value)
        if key in _CALLER_ID_KEYS:
            return _caller_id(value)
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_value(key, v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        call = tracing.current()
        if call is not None:
            payload["trace_id"] = call.trace_id
            if call.request_id:
                payload["request_id"] = _caller_id(call.request_id)
            if call.origin_id:  # the request further up this one was made for (a 2207's msgid)
                payload["origin_id"] = _caller_id(call.origin_id)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                payload[key] = _mask_value(key, value)  # nested lists and objects too
        if record.exc_info:
            payload["exc"] = _HAN_RUN.sub(lambda m: mask_name(m.group(0)),
                                          scrub(self.formatException(record.exc_info)))
        return _encode(payload)


def setup(service: str, level: str = "INFO") -> None:
    # The JSON lines carry none of the caller's file and line, thread or process: the logging
    # module's own optimisation switches spare collecting them for every record.
    logging._srcfile = None  # documented in the logging HOWTO, "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, msg: str, **fields: Any) -> None:
    logger.info(msg, extra={"fields": fields})


def answer_level(reason: str) -> int:
    """The level of the line that logs an answer with this reason, in every service: WARNING when it
    says a service or a store did not answer (errors.NOT_ANSWERED: REGISTRY_UNAVAILABLE,
    STORE_UNAVAILABLE passed on, …) or that one answered amiss (errors.ANSWERED_AMISS: DOWNSTREAM_ERROR,
    …), INFO for a refusal, a lock still busy, contention."""
    return logging.WARNING if reason in errors.NOT_ANSWERED or reason in errors.ANSWERED_AMISS else logging.INFO


class PassFailures:
    """How a background loop (a registry's recovery, the wallet's maintenance) says its failed passes. A
    pass that fails for a reason the service does not describe is an ERROR line `<name> pass failed` with
    its traceback, every time. One that meets a store that cannot serve (errors.from_store: down, or
    answering but refusing writes: MISCONF, OOM, NOREPLICAS, READONLY) would meet it every pass until
    the store serves: `<name> passes skipped: the store cannot serve` once at WARNING per streak (then
    DEBUG), naming what the store said, and `<name> passes resumed` once a pass goes through; a store
    that refuses writes still answers PING, so health stays SERVING and these lines are the ones that
    say why the passes fail and when they stopped failing. The caller counts each pass."""

    def __init__(self, logger: logging.Logger, name: str) -> None:
        self._log = logger
        self._name = name
        self._store_failing = False  # the last pass met a store that cannot serve

    def failed(self, exc: BaseException) -> None:
        """A pass raised `exc` (call it inside the `except`, for the traceback)."""
        if errors.from_store(exc) is None:
            self._store_failing = False
            self._log.exception("%s pass failed", self._name)
            return
        self._log.log(logging.DEBUG if self._store_failing else logging.WARNING,
                      "%s passes skipped: the store cannot serve", self._name,
                      extra={"fields": {"error": scrub(f"{type(exc).__name__}: {exc}")}})
        self._store_failing = True

    def succeeded(self) -> None:
        """A pass went through: after a streak of store failures, `<name> passes resumed` at INFO, so
        the log says when the store served again (a store refusing writes ends no other line)."""
        if self._store_failing:
            self._log.info("%s passes resumed", self._name)
        self._store_failing = False
