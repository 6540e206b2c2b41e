"""The console's middleware: the session and its CSRF token on every form, security headers, the
request's trace and audit, and errors drawn as the console's own Chinese pages (`error_page`)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography.fernet import InvalidToken

from medaid.common import tracing
from medaid.common.logs import answer_level
from medaid.console import operators as ops
from medaid.console import rules
from medaid.console.backend import Refusal
from medaid.console.web import (
    _AUDITED,
    _CHINESE,
    _REFS_AS_OF,
    _REQUEST,
    _REQUEST_ID,
    _RESENT,
    _SESSION,
    COOKIE,
    FORM_STALE_TEXT,
    HTTP_ERROR_OTHER_ZH,
    HTTP_ERROR_ZH,
    OPEN_PATHS,
    RESEND_AGAIN_TEXT,
    RESEND_INVALID_TEXT,
    RESEND_SIGN_IN_TEXT,
    RESENT_UNSENT_TEXT,
    SCOPE_REASONS,
    SIGNED_OUT_TEXT,
    STORE_DOWN,
    STORE_DOWN_FORM_TEXT,
    STORE_DOWN_RESEND_TEXT,
    STORE_DOWN_TEXT,
    Console,
    Handler,
    form_page,
    log,
    new_request_id,
    posted,
)


def error_page(console: Console, request: web.Request, exc: web.HTTPException) -> web.Response:
    """An HTTP error as the console's own page: the message in Chinese (the one the console raised it
    with, else the status's) and a link back to the look-up page; the headers it carries (Allow) are
    kept. aiohttp's own texts ("404: Not Found", "Maximum request body size … exceeded") are English:
    the console's are Chinese, so a text without a Chinese character is not the console's."""
    own = exc.text if exc.text and _CHINESE.search(exc.text) else ""
    message = own or HTTP_ERROR_ZH.get(exc.status, HTTP_ERROR_OTHER_ZH)
    response = console.render(request, "error.html", status=exc.status, message=message, reason="",
                              retryable=exc.status == 503, resend="")
    for name, value in exc.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            response.headers.setdefault(name, value)
    return response


def middleware(console: Console) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        _SESSION.set(None)  # nobody is signed in until the cookie says so (an error page draws no menu)
        _AUDITED.set(False)
        _RESENT.set(None)
        _REFS_AS_OF.set(None)
        http_id = new_request_id()
        _REQUEST.set(http_id)
        try:
            response = await serve(request, handler, http_id)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # a redirect
            response = error_page(console, request, exc)
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; "
                                    "frame-ancestors 'none'; form-action 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Request-Id", http_id)
        return response

    async def serve(request: web.Request, handler: Handler, http_id: str) -> web.StreamResponse:
        cookie = request.cookies.get(COOKIE, "")
        session = ops.read(console.secret, cookie) if cookie else None
        if session is not None and session.operator_id not in console.operators:
            session = None  # an operator removed from the configuration is signed out
        if session is not None:
            # Signed is not enough: the session must still be live (not signed out), on any replica.
            try:
                live = await console.sessions.live(session)
            except STORE_DOWN as exc:
                log.error("session store unavailable", extra={"fields": {"error": type(exc).__name__}})
                text = STORE_DOWN_TEXT
                if request.method == "POST" and request.path != "/logout":
                    # Checked before anything is called: a form was not done (a 再次提交's first may have been).
                    text = STORE_DOWN_RESEND_TEXT if "resend" in await request.post() else STORE_DOWN_FORM_TEXT
                raise web.HTTPServiceUnavailable(text=text) from None
            op = console.operators[session.operator_id]
            if not live or not hmac.compare_digest(session.stamp, ops.password_stamp(console.secret, op.password_hash)):
                session = None  # signed out, or signed in with a password changed since
        _SESSION.set(session)
        # One id per HTTP request for the log; a form's own request id (the idempotency key) wins in audit().
        # The console is the edge of the trace of what an operator does (as the gateway is of a hospital
        # message): its log lines and the registry and wallet calls it makes carry one trace id.
        tracing.start(request.headers.get(tracing.HEADER), http_id)
        open_path = request.path in OPEN_PATHS or request.path.startswith("/static/")
        if session is None and not open_path:
            if request.method == "GET":
                raise web.HTTPSeeOther("/login")
            # A form sent after the sign-in ended (signed out in another window, the day's session run
            # out): nothing was called. Say so, and lead through sign-in back to the form's page.
            log.info("form refused: not signed in", extra={"fields": {"path": request.path}})
            form = await request.post()
            if "resend" in form:
                # 再次提交: the operator who sent the form signs in again and is offered it again (the
                # seal travels through sign-in); one changed or too old is not carried.
                token = str(form["resend"])
                try:
                    carried = token if console.open_seal(token).path == request.path_qs else ""
                except ValueError:
                    carried = ""
                return console.render(request, "error.html", status=403,
                                      message=RESEND_SIGN_IN_TEXT if carried else RESENT_UNSENT_TEXT, reason="",
                                      retryable=False, resend="", sign_in=form_page(request), carry=carried)
            return console.render(request, "error.html", status=403, message=SIGNED_OUT_TEXT, reason="",
                                  retryable=False, resend="", sign_in=form_page(request))
        if request.method == "POST" and session is not None and request.path != "/login":
            form = await request.post()
            token = str(form.get("csrf", ""))
            if not hmac.compare_digest(token, session.csrf(console.secret)):
                log.warning("csrf refused", extra={"fields": {"operator": session.operator_id, "path": request.path}})
                if "resend" in form:
                    # 再次提交 from a page drawn before the operator signed in again: nothing is called;
                    # the operator who sent the form is offered it again under this session's token.
                    return console.resend_offered(request, str(form["resend"]), RESEND_AGAIN_TEXT)
                # A page of another site, or one drawn before the operator signed in again: nothing is
                # called. Refreshing would send the same form again, so lead back to its page instead.
                return console.render(request, "error.html", status=403, message=FORM_STALE_TEXT, reason="",
                                      retryable=False, resend="", again=form_page(request))
            if "resend" in form:  # 再次提交: the form as first sent, under its own request id
                try:
                    sealed = console.open_seal(str(form["resend"]))
                    if sealed.path != request.path_qs or set(form) != {"csrf", "resend"}:
                        raise ValueError("sealed for another form, or fields sent beside the sealed ones")
                except ValueError:
                    log.warning("resend refused: seal", extra={"fields": {"operator": session.operator_id,
                                                                           "path": request.path}})
                    return console.render(request, "error.html", status=400, message=RESEND_INVALID_TEXT,
                                          reason="", retryable=False, resend="", again=form_page(request))
                if sealed.operator_id != session.operator_id:
                    return console.resend_refused(request, sealed)
                _RESENT.set(dict(sealed.fields))
                _REFS_AS_OF.set(sealed.at)
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            # A form refused by the console itself before its call (a link not this console's, a
            # person no registry knows): logged all the same, by the path it was sent to.
            if exc.status >= 400 and request.method == "POST" and session is not None and not _AUDITED.get():
                await audit_refused_form(request, f"HTTP_{exc.status}")
            raise
        except Refusal as exc:
            # A page whose reads were refused or got no answer: the reason in Chinese, not a stack trace.
            log.log(answer_level(exc.reason), "page refused", extra={"fields": {"path": request.path,
                                                                                "reason": exc.reason}})
            if request.method == "POST" and session is not None and not _AUDITED.get():
                await audit_refused_form(request, exc.reason)
            # A person the operator does not serve: forbidden, and nothing was called to send again.
            scope = exc.reason in SCOPE_REASONS
            response = console.render(request, "error.html",
                                      status=503 if exc.retryable else 403 if scope else 422,
                                      message=rules.refusal_text(exc.reason, exc.message, exc.metadata),
                                      reason=exc.reason, retryable=exc.retryable,
                                      resend=await resend_form(request, session) if session is not None and not scope
                                      else "")
        return response

    async def resend_form(request: web.Request, session: ops.Session) -> str:
        """A form whose page could not be drawn (after its call, or before it): its fields as sent,
        request id included, sealed (Console.seal_form) for the error page to send again (再次提交). Its
        call may have taken effect without the page saying so: sent again under its own request id it
        is answered by that call's outcome, where the page opened anew would make a new id, and a
        second payment."""
        if request.method != "POST":
            return ""
        data = await posted(request)
        if not _REQUEST_ID.match(str(data.get("request_id", ""))):
            return ""  # not a form of the console's (nothing was called under an id of its own)
        return console.seal_form(session.operator_id, request.path_qs,
                                 [(k, v) for k, v in data.items() if k != "csrf" and isinstance(v, str)],
                                 at=_REFS_AS_OF.get())

    async def audit_refused_form(request: web.Request, reason: str) -> None:
        """A form refused before its call (the read of the person it acts for got no answer, or was
        refused): its action is logged all the same, with the operator, the form's request id and
        the person of the page's link, by the path it was sent to."""
        data = await posted(request)
        rid = str(data.get("request_id", ""))
        try:
            pid = console.open_ref(request.query.get("p", ""))
        except (InvalidToken, ValueError):
            pid = ""
        console.audit(request, request.path, reason, rid if _REQUEST_ID.match(rid) else "", id_number=pid)

    return mw


# --- forms ---------------------------------------------------------------------------------------
