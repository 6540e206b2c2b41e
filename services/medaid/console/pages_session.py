"""The console's pages around the counter's work: sign-in and sign-out, the large-print preference, and
its health (its own readiness, and each registry and the wallet for monitoring)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from collections.abc import Mapping

from aiohttp import web

from medaid.console import operators as ops
from medaid.console.web import (
    _LOCAL_PATH,
    _SESSION,
    BACKENDS_PATH,
    COOKIE,
    HEALTH_PATH,
    HEALTH_TIMEOUT_S,
    HERE,
    LARGE_COOKIE,
    LOGIN_COOKIE,
    LOGIN_COOKIE_TTL_S,
    RESEND_AGAIN_TEXT,
    STORE_DOWN,
    STORE_DOWN_TEXT,
    Console,
    Form,
    see_other,
)

log = logging.getLogger("medaid.console")
# A sealed form (Console.seal_form) as it may travel through sign-in: a Fernet token, of a bounded size.
_SEALED = re.compile(r"^[A-Za-z0-9_=-]{1,6000}\Z")


def add_routes(app: web.Application, console: Console) -> None:
    def login_form(request: web.Request, form: Form, status: int = 200) -> web.Response:
        """The sign-in page, with this browser's login token (a fresh one when it has none)."""
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = not re.fullmatch(r"[0-9a-f]{32}", nonce)
        if fresh:
            nonce = secrets.token_hex(16)
        resp = console.render(request, "login.html", status=status, form=form, login_token=console.login_token(nonce))
        if fresh:
            resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=console.secure_cookies,
                            max_age=LOGIN_COOKIE_TTL_S)
        return resp

    def back_to(data: Mapping[str, object]) -> dict[str, str]:
        """Where sign-in leads after it (`next`: the page of a form sent after the sign-in ended), when
        it is a page of this site; else nowhere but the look-up page. A 再次提交 refused because the
        sign-in had ended carries its sealed form (`resend`) through sign-in instead: it is offered
        again once signed in (Console.resend_offered)."""
        path, resend = str(data.get("next", "")), str(data.get("resend", ""))
        if _SEALED.match(resend):
            return {"resend": resend}
        return {"next": path} if _LOCAL_PATH.match(path) and not path.startswith("/login") else {}

    async def login_page(request: web.Request) -> web.Response:
        return login_form(request, Form("login", back_to(request.query)))

    def known_id(op_id: str) -> str:
        """The operator id typed, when it is an operator's; else "". The field is free text, and a
        password typed into it by mistake (the next most common slip after a wrong password) must be
        neither kept in clear in the log nor shown back on the counter's screen."""
        return op_id if op_id in console.operators else ""

    def logged_id(op_id: str) -> str:
        """The operator id a refused sign-in is logged with: as typed only when it is an operator's;
        else its length alone."""
        return known_id(op_id) or f"unknown ({len(op_id)} characters)"

    async def login(request: web.Request) -> web.StreamResponse:
        data = await request.post()
        op_id, password = str(data.get("operator", "")).strip(), str(data.get("password", ""))
        after = back_to(data)
        peer = ops.client_address(request.remote or "", request.headers.get("X-Forwarded-For", ""),
                                  console.trusted_proxies)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(str(data.get("csrf", "")), console.login_token(nonce)):
            # Not this console's sign-in page (another site's form, or a page older than its cookie):
            # judged before the password, so it counts as no attempt and signs nobody in.
            log.warning("sign-in refused: form token", extra={"fields": {"operator": logged_id(op_id), "peer": peer}})
            form = Form("login", {"operator": known_id(op_id), **after})
            form.errors["password"] = "登录页面已失效,请重新输入工号和密码后登录"
            return login_form(request, form, status=403)
        keys, now = (f"op:{op_id[:32]}", f"peer:{peer}"), console.clock.now_ms()
        wait_ms = console.throttle.locked(keys, now)
        if wait_ms:
            log.warning("sign-in refused: too many failures", extra={"fields": {
                "operator": logged_id(op_id), "peer": peer, "wait_s": wait_ms // 1000}})
            form = Form("login", {"operator": known_id(op_id), **after})
            form.errors["password"] = (f"登录失败次数过多，请 {-(-wait_ms // 60_000)} 分钟后再试；"
                                       "忘记密码请联系系统管理员")
            return login_form(request, form, status=429)
        op = ops.authenticate(console.operators, op_id, password)
        if op is None:
            console.throttle.failed(keys, now)
            log.warning("sign-in refused", extra={"fields": {"operator": logged_id(op_id), "peer": peer}})
            form = Form("login", {"operator": known_id(op_id), **after})
            form.errors["password"] = "工号或密码错误"
            return login_form(request, form, status=401)
        console.throttle.succeeded(keys)
        session, cookie = ops.issue(console.secret, op.operator_id, password_hash=op.password_hash)
        replaced = _SESSION.get()  # this browser's live session, if it is signed in already (a shared PC)
        try:
            await console.sessions.add(session)
            if replaced is not None:  # it ends here: a copy of its cookie is refused from now on
                await console.sessions.revoke(replaced)
        except STORE_DOWN as exc:
            log.error("session store unavailable", extra={"fields": {"error": type(exc).__name__}})
            form = Form("login", {"operator": op_id, **after})
            form.errors["password"] = STORE_DOWN_TEXT
            return login_form(request, form, status=503)
        log.info("signed in", extra={"fields": {"operator": op.operator_id, "role": op.role}})
        if "resend" in after:
            _SESSION.set(session)
            resp: web.Response = console.resend_offered(request, after["resend"], RESEND_AGAIN_TEXT)
        else:
            resp = see_other(after.get("next", "/"))
        resp.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", secure=console.secure_cookies,
                        max_age=ops.SESSION_TTL_S)
        return resp

    async def logout(request: web.Request) -> web.StreamResponse:
        session = _SESSION.get()
        if session is not None:
            try:
                await console.sessions.revoke(session)  # a copy of the cookie is refused from now on
            except STORE_DOWN as exc:  # not signed out anywhere yet: say so rather than pretend
                log.error("session store unavailable", extra={"fields": {"error": type(exc).__name__}})
                raise web.HTTPServiceUnavailable(text="退出登录未完成(登录状态暂时无法更新),请稍后再试") from None
        console.audit(request, "logout", "OK")
        resp = see_other("/login")
        resp.del_cookie(COOKIE)
        return resp

    async def prefs(request: web.Request) -> web.StreamResponse:
        data = await request.post()
        back = str(data.get("next", "/"))
        resp = see_other(back if _LOCAL_PATH.match(back) else "/")
        large = request.cookies.get(LARGE_COOKIE) == "1"
        resp.set_cookie(LARGE_COOKIE, "0" if large else "1", httponly=True, samesite="Strict",
                        max_age=365 * 86400)
        return resp

    async def healthz(request: web.Request) -> web.Response:
        # Readiness is the console's own: a registry or the wallet being down takes no replica out of
        # service (people insured in other provinces are still served); /healthz/backends names them.
        try:
            await asyncio.wait_for(console.sessions.ping(), HEALTH_TIMEOUT_S)
            sessions = True
        except (*STORE_DOWN, TimeoutError) as exc:
            log.error("session store unavailable", extra={"fields": {"error": type(exc).__name__}})
            sessions = False
        return web.json_response({"serving": sessions, "sessions": sessions}, status=200 if sessions else 503)

    async def backends(request: web.Request) -> web.Response:
        report = await console.backend.healthy()
        return web.json_response({"serving": all(report.values()), "downstream": report},
                                 status=200 if all(report.values()) else 503)

    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/prefs", prefs)
    app.router.add_get(HEALTH_PATH, healthz)
    app.router.add_get(BACKENDS_PATH, backends)
    app.router.add_static("/static", HERE / "static")
