"""HTTP side of the console (aiohttp + Jinja2): sign-in, sessions, CSRF, forms, rendering.

Every page is rendered on the server; the only script is the print button's (a static file). A signed-in session is
an HMAC-signed cookie (operators.py) whose record the server keeps (sessions.py): signing out deletes
the record, so a copy of the cookie no longer works; each POST carries the session's CSRF token. Each form carries
its own request id, made when the form is rendered, which the services use as the idempotency key:
a double click or a resend of the same form has one effect. A refused form comes back with the
operator's input, the reason's message next to its field, and a new request id (the refusal wrote
nothing); a form whose call did not get an answer keeps its request id, so sending it again is safe,
and so does a form the console refuses itself (a slip in a field: nothing was called with it).
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jinja2
import redis.exceptions
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from medaid.common import tracing
from medaid.common.clock import Clock
from medaid.common.idnumber import InvalidIdNumber
from medaid.common.logs import answer_level
from medaid.common.names_zh import PROVINCE_ZH
from medaid.common.v1 import common_pb2 as cpb
from medaid.console import operators as ops
from medaid.console import rules
from medaid.console.backend import Backend, Refusal
from medaid.console.sessions import ProcessSessions, SessionStore

log = logging.getLogger("medaid.console")
HERE = Path(__file__).parent
COOKIE = "medaid_console"
# Before sign-in: a random value whose HMAC the sign-in form carries (login CSRF). A page of another
# site cannot read the form's token, and a SameSite=Strict cookie is not sent with its POST, so it
# cannot sign the counter's browser in as an operator of its choosing (whose id the audit would then
# put on what the real operator does).
LOGIN_COOKIE = "medaid_login"
LOGIN_COOKIE_TTL_S = 3600
LARGE_COOKIE = "medaid_large"
# A form's request id: 26 base32 letters (a run of digits long enough to read as an id number, which
# the logs would mask, cannot come of them), or 32 hex digits as ids were drawn before.
_REQUEST_ID = re.compile(r"^console-(?:[a-z2-7]{26}|[0-9a-f]{32})$")
# Where /prefs may send the browser back to: a path of this site. Browsers read a backslash as a
# slash and drop tabs and newlines, so "/\evil" or "/<tab>/evil" would leave the site.
_LOCAL_PATH = re.compile(r"^/(?![/\\])[^\\\s]*\Z")

# A form's hidden reference to a person is missing or was not made by this console.
REF_INVALID_TEXT = "页面信息不完整或已失效,本次没有办理;请刷新页面后重新办理"
# A page's link to a person (?p=) is missing, forged, or older than a session's day.
LINK_INVALID_TEXT = "链接已失效,请重新查询"
# An HTTP error raised without a message of the console's own (aiohttp's router: an unknown path, a
# wrong method, a body too large): the page says it in Chinese; any other status gets the last line.
HTTP_ERROR_ZH = {
    400: "请求有误,请返回查询页重新办理", 403: "无权访问该页面", 404: "没有这个页面,请检查地址或返回查询页",
    405: "该页面不支持这种访问方式,请从查询页重新进入", 413: "提交的内容过大,请检查后重新提交",
}
HTTP_ERROR_OTHER_ZH = "无法处理该请求,请返回查询页重新办理"
_CHINESE = re.compile(r"[\u4e00-\u9fff]")
# An operator serves the people insured in their provinces (operators.provinces_served): a page or a
# form for anyone else is refused with one of these, before anything is read or written for them.
OUTSIDE_PROVINCE = "OPERATOR_OUTSIDE_PROVINCE"
NO_PROVINCES = "OPERATOR_NO_PROVINCES"
SCOPE_REASONS = frozenset({OUTSIDE_PROVINCE, NO_PROVINCES})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The signed-in session and the HTTP request's id, set by the middleware for the task serving the request.
_SESSION: contextvars.ContextVar[ops.Session | None] = contextvars.ContextVar("console_session", default=None)
_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("console_request", default="")
# Whether the request's action has its `console action` line yet (Console.audit): one refused before
# it got to its call is logged by the middleware instead.
_AUDITED: contextvars.ContextVar[bool] = contextvars.ContextVar("console_audited", default=False)
# A form sent again from an error page (再次提交): its fields as first sent, unsealed by the middleware.
_RESENT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("console_resent", default=None)
# ... and when it was sealed: the references to people it carries are judged as of then (Console.open_ref).
_REFS_AS_OF: contextvars.ContextVar[int | None] = contextvars.ContextVar("console_refs_as_of", default=None)
# How long a sealed form may be sent again (再次提交). The registries and the wallet keep a request id's
# claim without expiry, so it is answered by its first outcome however late it comes; what ends it is
# the console's: one working day, the lifetime of a session and of a page's references to people. It
# outlives the session it was sent in: an outage is when sign-ins run out, and the operator who sent it
# signs in again to send it.
RESEND_TTL_S = ops.SESSION_TTL_S
# 再次提交 of a form another operator sent (a page left open on a shared counter PC): refused.
RESEND_OTHER_OPERATOR = "RESEND_OTHER_OPERATOR"


@dataclass(frozen=True)
class Sealed:
    """A form as first sent, carried by its error page for 再次提交 (Console.seal_form)."""

    operator_id: str
    path: str  # the path and query it was sent to (its person's reference)
    fields: list[tuple[str, str]]
    at: int  # when it was sealed (Unix seconds)


def relation_zh(value: int) -> str:
    name = cpb.Relation.Name(cpb.Relation.ValueType(value)).removeprefix("RELATION_") \
        if value in cpb.Relation.values() else ""
    return rules.RELATION_ZH.get(name, "-")


def http_request_id() -> str:
    """The id of the HTTP request being served (its X-Request-Id), which its `console action` line
    carries where no form's request id is named."""
    return _REQUEST.get()


def new_request_id() -> str:
    return "console-" + base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


@dataclass
class Form:
    """One form on a page: what the operator typed, refusals by field ("" = the whole form), its request id."""

    name: str
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=new_request_id)
    done: str = ""

    def v(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)


@dataclass
class Console:
    backend: Backend
    operators: Mapping[str, ops.Operator]
    secret: bytes
    clock: Clock
    secure_cookies: bool = False
    trusted_proxies: tuple[ops.Network, ...] = ()  # an Ingress: X-Forwarded-For then names the client
    throttle: ops.SignInThrottle = field(default_factory=ops.SignInThrottle)
    sessions: SessionStore = field(default_factory=ProcessSessions)  # which signed sessions are live
    env: jinja2.Environment = field(init=False)
    fernet: Fernet = field(init=False)

    def __post_init__(self) -> None:
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True,
                                      lstrip_blocks=True, undefined=jinja2.StrictUndefined)
        self.env.filters.update(yuan=rules.yuan, mask=rules.masked_id, mask_name=rules.masked_name,
                                region=rules.region_name, when=rules.shanghai_time, ref=self.ref,
                                reason_zh=rules.refusal_text)
        self.env.globals.update(RELATION_ZH=rules.RELATION_ZH, zh_status=rules.STATUS_ZH,
                                zh_type=rules.INSURANCE_TYPE_ZH, zh_category=rules.CATEGORY_ZH,
                                zh_transfer=rules.TRANSFER_STATE_ZH, zh_entry=rules.WALLET_ENTRY_ZH,
                                zh_record=rules.RECORD_STATE_ZH,
                                new_rid=new_request_id,
                                relation_zh=relation_zh)
        key = hashlib.sha256(b"medaid-console-refs:" + self.secret).digest()
        self.fernet = Fernet(base64.urlsafe_b64encode(key))

    # Id numbers never travel in URLs or hidden fields in clear: an encrypted reference does.
    def ref(self, id_number: str) -> str:
        return self.fernet.encrypt(id_number.encode()).decode()

    def open_ref(self, token: str) -> str:
        """The id number a reference names, while it is valid: for a day (ops.SESSION_TTL_S) after the
        page that carries it was drawn, judged as of the sealing of the form that carries it when that
        form is sent again (再次提交: the references were good when it was first sent). Raises
        InvalidToken (or ValueError) otherwise."""
        as_of = _REFS_AS_OF.get()
        if as_of is None:
            return self.fernet.decrypt(token.encode(), ttl=ops.SESSION_TTL_S).decode()
        return self.fernet.decrypt_at_time(token.encode(), ttl=ops.SESSION_TTL_S, current_time=as_of).decode()

    def unref(self, token: str) -> str:
        try:
            return self.open_ref(token)
        except (InvalidToken, ValueError):
            raise web.HTTPBadRequest(text=LINK_INVALID_TEXT) from None

    def seal_form(self, operator_id: str, path: str, fields: Sequence[tuple[str, str]], at: int | None = None) -> str:
        """A form as sent, for an error page to send again (再次提交): one encrypted reference to its
        fields (its request id among them), the path it was sent to and the operator who sent it, so no
        id number or name typed in it is in the page in clear, and nobody can change a field of it.
        `at`: when it was first sealed, for a form sealed again after a 再次提交 that got no answer
        either (its references and its day count from then)."""
        body = json.dumps({"operator": operator_id, "path": path, "fields": list(fields)}).encode()
        return (self.fernet.encrypt(body) if at is None else self.fernet.encrypt_at_time(body, at)).decode()

    def open_seal(self, token: str) -> Sealed:
        """What `seal_form` sealed, while it may be sent again (RESEND_TTL_S); raises ValueError for a
        token changed, made elsewhere or older than that."""
        try:
            raw = token.encode()
            sealed = json.loads(self.fernet.decrypt(raw, ttl=RESEND_TTL_S))
            return Sealed(str(sealed["operator"]), str(sealed["path"]),
                          [(str(k), str(v)) for k, v in sealed["fields"]], self.fernet.extract_timestamp(raw))
        except (InvalidToken, ValueError, KeyError, TypeError) as exc:
            raise ValueError("not a form this console sealed, or sealed too long ago") from exc

    def ref_field(self, form: Form, key: str, error_key: str = "") -> str:
        """The id number a form's hidden reference `key` names; "" with a Chinese error by
        `error_key` ("" = above the form) when it is missing or not one this console made (a hand-made
        POST, a page kept open past the session's day): the form comes back, nothing is called."""
        try:
            return self.open_ref(form.v(key))
        except (InvalidToken, ValueError):
            form.errors.setdefault(error_key, REF_INVALID_TEXT)
            return ""

    def resend_refused(self, request: web.Request, sealed: Sealed) -> web.Response:
        """再次提交 of a form another operator sent, from this operator's session: nothing is called;
        logged with this operator, the form's request id and the person of its page (masked)."""
        rid = dict(sealed.fields).get("request_id", "")
        path, _, query = sealed.path.partition("?")
        token = _REFS_AS_OF.set(sealed.at)
        try:
            pid = self.open_ref(dict(parse_qsl(query)).get("p", ""))
        except (InvalidToken, ValueError):
            pid = ""
        finally:
            _REFS_AS_OF.reset(token)
        self.audit(request, path, RESEND_OTHER_OPERATOR, rid if _REQUEST_ID.match(rid) else "",
                   sent_by=sealed.operator_id, id_number=pid)
        return self.render(request, "error.html", status=403, message=rules.refusal_text(RESEND_OTHER_OPERATOR),
                           reason=RESEND_OTHER_OPERATOR, retryable=False, resend="")

    def resend_offered(self, request: web.Request, token: str, message: str) -> web.Response:
        """The page that offers 再次提交 of a sealed form (`token`) under the signed-in session's CSRF
        token, once that session's operator is the one who sent it (signed in again since): pressing
        it is the operator's, never this request's; another operator's form is refused instead."""
        session = _SESSION.get()
        assert session is not None
        try:
            sealed = self.open_seal(token)
        except ValueError:
            return self.render(request, "error.html", status=403, message=RESENT_UNSENT_TEXT, reason="",
                               retryable=False, resend="", again=form_page(request))
        if sealed.operator_id != session.operator_id:
            return self.resend_refused(request, sealed)
        return self.render(request, "error.html", status=200, message=message, reason="", retryable=True,
                           resend=token, resend_to=sealed.path)

    def login_token(self, nonce: str) -> str:
        return hmac.new(self.secret, f"login:{nonce}".encode(), hashlib.sha256).hexdigest()

    def render(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        session = _SESSION.get()
        op = self.operators.get(session.operator_id) if session else None
        html = self.env.get_template(template).render(
            op=op, csrf=session.csrf(self.secret) if session else "", large=request.cookies.get(LARGE_COOKIE) == "1",
            path=request.path_qs, **ctx)
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)

    def provinces(self, op: ops.Operator) -> frozenset[str]:
        """The provinces whose insured people `op` serves (operators.provinces_served)."""
        return ops.provinces_served(op, self.backend.provinces())

    def unscoped(self) -> dict[str, frozenset[str]]:
        """The operators the file gives no `provinces`, and whom each serves instead (startup warning)."""
        return {op_id: self.provinces(op) for op_id, op in self.operators.items() if op.provinces is None}

    def outside(self, op: ops.Operator, province: str) -> Refusal | None:
        """Why `op` may not act for, nor read the data of, a person insured in `province`; None: they may."""
        served = self.provinces(op)
        if province in served:
            return None
        if not served:
            return Refusal(NO_PROVINCES)
        return Refusal(OUTSIDE_PROVINCE, metadata={
            "served": "、".join(PROVINCE_ZH.get(p, p) for p in sorted(served))})

    async def may_serve(self, request: web.Request, province: str, action: str = "", **people: str) -> None:
        """Refuse (Refusal) a page or a form for a person insured in `province` the operator does not
        serve; logged with the operator, the form's request id and the people concerned (masked)."""
        refusal = self.outside(self.operator(request), province)
        if refusal is None:
            return
        rid = str((await posted(request)).get("request_id", "")) if request.method == "POST" else ""
        self.audit(request, action or request.path, refusal.reason, rid if _REQUEST_ID.match(rid) else "",
                   insured_in=province, **people)
        raise refusal

    def operator(self, request: web.Request) -> ops.Operator:
        session = _SESSION.get()
        if session is None:
            raise web.HTTPForbidden(text="未登录或登录已过期")
        return self.operators[session.operator_id]

    def audit(self, request: web.Request, action: str, outcome: str, request_id: str = "", **fields: str) -> None:
        op = self.operator(request)
        _AUDITED.set(True)
        # At the outcome's level by the one rule (logs.answer_level): a refusal INFO, a service that
        # did not answer (or answered amiss) WARNING.
        log.log(answer_level(outcome), "console action", extra={"fields": {
            "operator": op.operator_id, "role": op.role, "action": action, "request_id": request_id or _REQUEST.get(),
            "outcome": outcome, **fields}})


# --- middleware: session, CSRF, security headers ----------------------------------------------------

HEALTH_PATH = "/healthz"  # readiness: the console's own (its session store answers)
BACKENDS_PATH = "/healthz/backends"  # each registry and the wallet, for monitoring: never a probe's
# A readiness probe waits 1 s by default: a store slower than this is taken as not answering.
HEALTH_TIMEOUT_S = 0.5
OPEN_PATHS = frozenset({"/login", HEALTH_PATH, BACKENDS_PATH, "/prefs"})
# What a session store that does not answer raises (Redis down, timed out, refusing writes).
STORE_DOWN = (redis.exceptions.RedisError, OSError)
STORE_DOWN_TEXT = "登录状态暂时无法核验,请稍后再试"
# ... for a form: checked before anything is called, so the page says nothing was done (refreshing
# sends the same form again, under its own request id).
STORE_DOWN_FORM_TEXT = "登录状态暂时无法核验,刚才提交的业务没有办理(没有写入任何内容),请稍后再试"
# ... for a 再次提交: this one was not sent, but the form sent first may have been done.
STORE_DOWN_RESEND_TEXT = ("登录状态暂时无法核验,本次“再次提交”没有发出。先前提交的业务可能已经办理:请不要另行填写表单,"
                          "稍后刷新本页重试,同一笔业务只办理一次")
FORM_STALE_TEXT = ("表单已失效(页面是在本次登录之前打开的,或不是本系统的页面),刚才提交的业务没有办理"
                   "(没有写入任何内容)。请回到原页面重新填写后提交")
# 再次提交 of a form whose call got no answer, refused for either reason above: this POST did nothing,
# but the first one may have; filling the form in anew (a new request id) could do it a second time.
RESENT_UNSENT_TEXT = ("登录已过期或表单已失效,本次“再次提交”没有发出。先前提交的业务可能已经办理:"
                      "请回到原页面核对(转出、代缴记录,账户余额等)后再决定是否办理,以免重复办理")
# 再次提交 after the sign-in ended: not sent; the operator who sent the form signs in again and sends it.
RESEND_SIGN_IN_TEXT = ("登录已过期或已退出,本次“再次提交”没有发出。先前提交的业务可能已经办理:请不要另行填写表单,"
                       "点“重新登录”,登录后再点“再次提交”,同一笔业务只办理一次,并显示其结果")
# ... and once signed in again: the same form, under the new session's token, for the operator to send.
RESEND_AGAIN_TEXT = ("已重新登录,先前的“再次提交”还没有发出。先前提交的业务可能已经办理:请点“再次提交”,"
                     "同一笔业务只办理一次,并显示其结果")
# 再次提交 whose sealed form was changed, was made for another form, or is older than RESEND_TTL_S.
RESEND_INVALID_TEXT = ("“再次提交”的页面已失效或被改动(超过一天,或不是本系统为这笔业务生成的页面),本次没有发出,"
                       "没有写入任何内容。先前提交的业务可能已经办理:请回到原页面核对(转出、代缴记录,账户余额等)"
                       "后再决定是否办理,以免重复办理")
SIGNED_OUT_TEXT = ("登录已过期或已退出,刚才提交的业务没有办理(没有写入任何内容)。"
                   "请重新登录,登录后回到原页面再提交一次")


def form_page(request: web.Request) -> str:
    """The page a form sent to `request.path` is drawn on, for the same person: /bindings/bind?p=… is
    on /bindings?p=…, /diagnose on /diagnose; a form of no page of a person (/lookup) on /."""
    ref = request.query.get("p", "")
    for path in (request.path.rsplit("/", 1)[0], request.path):
        if any(resource.canonical == path and any(route.method == "GET" for route in resource)
               for resource in request.app.router.resources()):
            return path + (f"?p={ref}" if ref else "") if _LOCAL_PATH.match(path) else "/"
    return "/"


async def posted(request: web.Request) -> Mapping[str, object]:
    """A form's fields: as posted, or, sent again from an error page (再次提交), as first sent."""
    resent = _RESENT.get()
    return resent if resent is not None else await request.post()


async def read_form(request: web.Request, name: str) -> Form:
    data = await posted(request)
    values = {k: str(v) for k, v in data.items() if k not in ("csrf", "request_id")}
    rid = str(data.get("request_id", ""))
    form = Form(name, values, request_id=rid if _REQUEST_ID.match(rid) else new_request_id())
    if not _REQUEST_ID.match(rid):
        form.errors[""] = rules.refusal_text("INVALID_REQUEST_ID")
    return form


def id_field(form: Form, key: str, *, required: bool = True) -> str:
    """The id number typed in `key`, checked (GB 11643) before any call; "" with an error set."""
    text = form.v(key).strip()
    if not text:
        if required:
            form.errors[key] = "请填写18位居民身份证号码"
        return ""
    try:
        return rules.check_id_number(text)
    except InvalidIdNumber:
        form.errors[key] = rules.refusal_text("INVALID_ID_NUMBER")
        return ""


def refuse(form: Form, exc: Refusal, fields: Mapping[str, str],
           words: Sequence[tuple[str, str]] = ()) -> None:
    """Put a refusal's Chinese message next to its field, in the flow's `words` (rules.refusal_text);
    a refused call wrote nothing, so the form gets a new request id, while one that may still take
    effect (no answer) keeps its own."""
    key = rules.field_for(exc.reason, exc.metadata, fields)
    text = rules.refusal_text(exc.reason, exc.message, exc.metadata, words)
    form.errors[key] = f"{text}({exc.reason})"
    if not exc.retryable:
        form.request_id = new_request_id()


async def run_action(console: Console, request: web.Request, form: Form, fields: Mapping[str, str],
                     action: Callable[[], Awaitable[str]], *, words: Sequence[tuple[str, str]] = (),
                     **audit: str) -> bool:
    """Run a mutating call unless the form already has errors (then the form keeps its request id);
    log it with operator and request id.
    A refusal is told in the flow's `words` (rules.PREMIUM_WORDS for a 代缴)."""
    if form.errors:
        # Nothing is called, and the form keeps its request id: one whose earlier call got no answer
        # may have taken effect, and only that id has the corrected form answered by its outcome.
        console.audit(request, form.name, "INPUT_INVALID", form.request_id, **audit)
        return False
    try:
        # The form is the edge of what it causes: its calls, and every call made for them further on,
        # carry its request id as their origin (tracing.acting_for), so that the one id its
        # `console action` line names finds every line of every service for it.
        with tracing.acting_for(form.request_id):
            form.done = await action()
    except Refusal as exc:
        console.audit(request, form.name, exc.reason, form.request_id, **audit)
        refuse(form, exc, fields, words)
        return False
    console.audit(request, form.name, "OK", form.request_id, **audit)
    form.values = {}
    form.request_id = new_request_id()
    return True


def see_other(location: str) -> web.Response:
    """A 303 that can carry cookies (an HTTPException raised would lose them)."""
    return web.Response(status=303, headers={"Location": location})


def make_app(console: Console) -> web.Application:
    from medaid.console import pages_family, pages_person, pages_receipt, pages_session, pages_wallet
    from medaid.console.middleware import middleware

    app = web.Application(middlewares=[middleware(console)], client_max_size=64 * 1024)
    pages_session.add_routes(app, console)
    pages_person.add_routes(app, console)
    pages_wallet.add_routes(app, console)
    pages_family.add_routes(app, console)
    pages_receipt.add_routes(app, console)
    return app
