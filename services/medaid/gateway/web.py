"""HTTP transport (aiohttp): the national call path, the OpenAPI document, Swagger UI, health.

Two health endpoints, as the gRPC services have two health names: `/healthz` (readiness) is 200 only
while the gateway's Redis and the router answer, else 503 with what is down; `/livez` (liveness)
is 200 while the process serves HTTP at all, so that an outage of Redis or the router takes gateways
out of rotation without getting them restarted.

On the call path every answer is the envelope with HTTP 200, whatever went wrong (a 9102 download
that finds its file is answered with the file: application/octet-stream): a body over
MAX_BODY (after decompression: a gzip or deflate body is read decompressed) is answered
REQUEST_TOO_LARGE, a body its Content-Encoding does not decompress INVALID_CONTENT_ENCODING, another
method than POST INVALID_ENVELOPE, all in the envelope the hospital system already parses. The body is
decoded here (`_decoded`), not by aiohttp: aiohttp answers a coding it cannot decode (br, zstd) with an
HTTP 400 in plain text before any handler runs. Swagger
UI's files are served from the swagger-ui-py package's directory (no CDN); only its static files are
used.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from medaid.common import otel, tracing
from medaid.gateway import openapi, wire
from medaid.gateway.answers import GatewayError
from medaid.gateway.service import Gateway

CALL_PATH = openapi.CALL_PATH
HEALTH_PATH = "/healthz"
LIVENESS_PATH = "/livez"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
MAX_BODY = 1024 * 1024

# zlib's window bits for each coding served: gzip's header, deflate's zlib header (RFC 9110 §8.4.1.2;
# a body of raw deflate without it, as some clients send, is tried next: _inflate).
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Codings that are codings, but not served here: refused, never read as if they were plain text.
_NOT_SERVED = frozenset({"br", "zstd", "compress", "x-compress", "aes128gcm", "exi", "pack200-gzip"})


class _CodingProblem(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


def _inflate(body: bytes, wbits: int) -> bytes:
    """One coding undone, at most MAX_BODY bytes of it (a small body that inflates without end is no
    message). A body cut short gives what it holds (then INVALID_JSON)."""
    for bits in (wbits, -zlib.MAX_WBITS) if wbits == zlib.MAX_WBITS else (wbits,):
        try:
            out = zlib.decompressobj(bits).decompress(body, MAX_BODY + 1)
        except zlib.error:
            continue
        if len(out) > MAX_BODY:
            raise _CodingProblem("REQUEST_TOO_LARGE")
        return out
    raise _CodingProblem("INVALID_CONTENT_ENCODING")


def _decoded(body: bytes, content_encoding: str) -> bytes:
    """The body with its Content-Encoding undone: a list of codings in the order they were applied
    (`gzip, identity`), each undone from the last. `identity` is none; a label that is no coding
    (`UTF-8`: Apache HttpClient's `entity.setContentEncoding("UTF-8")`, meant as the charset) leaves
    the body as sent, as it always did; a coding not served here (br, zstd) is INVALID_CONTENT_ENCODING."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    if any(c in _NOT_SERVED for c in codings):
        raise _CodingProblem("INVALID_CONTENT_ENCODING")
    for coding in reversed(codings):
        if coding in _CODINGS:
            body = _inflate(body, _CODINGS[coding])
    return body


def _swagger_static() -> Path:
    """swagger-ui-py's copy of Swagger UI's dist files (the package is found, not imported)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed (a dependency of medaid: make setup)")
    return Path(spec.origin).parent / "static"


_DOCS_HTML = """<!DOCTYPE html>
<html lang="zh-CN">
<head>
  <meta charset="utf-8">
  <title>medaid 国家医保平台接口网关</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
  </script>
</body>
</html>
"""


def make_app(gateway: Gateway) -> web.Application:
    def json_answer(body: bytes, charset: str) -> web.Response:
        """The envelope in the charset the HIS wrote its message in (wire.body_charset): GB18030 for one
        that wrote GBK (it reads the answer in it too: GB18030 holds every character), else UTF-8."""
        if charset == wire.GB18030:
            return web.Response(body=body.decode("utf-8").encode(wire.GB18030), content_type="application/json",
                                charset=wire.GB18030)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    def envelope(request: web.Request, code: str, context: str = "") -> web.Response:
        """A refusal before the body is read: in the charset the request declares."""
        return json_answer(gateway.refuse(GatewayError(code, context)).body,
                           wire.declared_charset(request.headers.get("Content-Type")))

    async def call(request: web.Request) -> web.Response:
        # The edge of the trace: the caller's traceparent continued, or a new trace (medaid.common.tracing).
        trace = tracing.start(request.headers.get(tracing.HEADER))
        span = otel.start_span("gateway " + CALL_PATH, trace) if trace.sampled else None
        try:
            return await answer(request)
        finally:
            if span is not None:  # an answer with infcode -1 is the span's error, with its reason
                otel.end_span(span, "INFCODE_-1" if trace.reason else "OK", trace.reason)

    async def answer(request: web.Request) -> web.Response:
        if request.method != "POST":
            return envelope(request, "INVALID_ENVELOPE", f"HTTP {request.method}: 须使用 POST")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return envelope(request, "REQUEST_TOO_LARGE", f"{request.content_length} 字节")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked): counted while reading
            return envelope(request, "REQUEST_TOO_LARGE")
        except web.RequestPayloadError:  # the body could not be read as it came
            return envelope(request, "INVALID_JSON", "报文不完整")
        coding = request.headers.get("Content-Encoding", "")
        try:
            body = _decoded(body, coding)
        except _CodingProblem as exc:
            return envelope(request, exc.code, f"Content-Encoding {coding[:20]}")
        answer = await gateway.handle(body, request.headers)
        if answer.filename:  # a 9102 download: the file itself, as the platform answers it
            return web.Response(body=answer.body, content_type=answer.content_type, headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(answer.filename, safe='')}"})
        # Always HTTP 200 with the envelope: infcode says whether the transaction succeeded.
        return json_answer(answer.body, answer.charset)

    async def healthz(request: web.Request) -> web.Response:
        ok, report = await gateway.health()
        return web.json_response(report, status=200 if ok else 503)

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(openapi.document(), dumps=openapi.dumps)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_HTML, content_type="text/html", charset="utf-8")

    # The body as sent (client_max_size counts it); _decoded undoes its Content-Encoding.
    app = web.Application(client_max_size=MAX_BODY, handler_args={"auto_decompress": False})
    app.router.add_route("*", CALL_PATH, call)
    # Hospital systems configure the address by hand, some with a closing slash: the same endpoint.
    app.router.add_route("*", CALL_PATH + "/", call)
    app.router.add_get(HEALTH_PATH, healthz)
    app.router.add_get(LIVENESS_PATH, livez)
    app.router.add_get(OPENAPI_PATH, openapi_json)
    app.router.add_get(DOCS_PATH, docs)
    app.router.add_static(f"{DOCS_PATH}/static", _swagger_static())
    return app
