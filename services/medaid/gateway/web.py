"""HTTP transport (aiohttp): the national call path and a health endpoint."""

from __future__ import annotations

from aiohttp import web

from medaid.gateway.service import Gateway

CALL_PATH = "/fsi/api/rsfComIfsService/callService"
HEALTH_PATH = "/healthz"
MAX_BODY = 1024 * 1024


def make_app(gateway: Gateway) -> web.Application:
    async def call(request: web.Request) -> web.Response:
        body = await request.read()
        answer = await gateway.handle(body, request.headers)
        # Always HTTP 200 with the envelope: infcode says whether the transaction succeeded.
        return web.Response(body=answer.body, content_type="application/json", charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        ok, report = await gateway.health()
        return web.json_response(report, status=200 if ok else 503)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(CALL_PATH, call)
    app.router.add_get(HEALTH_PATH, healthz)
    return app
