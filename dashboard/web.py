"""The dashboard's HTTP edge: who a browser is, what it may do, and the answers it gets.

A page trigger declares the permission it needs with `page(needs=...)`, as an API trigger does
with `shared.http.endpoint`. Before it runs:

- **Who.** The principal comes from the session cookie (`fleet_session`: the API token the
  person signed in with, HttpOnly, SameSite=Strict, scoped to `/dashboard`), else from the
  request's own credential (`Authorization: Bearer`, or Easy Auth's principal header on Azure:
  `shared.auth`), else none: a GET is sent to the sign-in page, a POST is a 401 page. With
  `FLEET_AUTH=off` everyone is `ANONYMOUS`, as on the API.
- **What.** A principal without the permission gets a 403 page; with `needs=None` anyone may.
- **Forged posts.** A state-changing POST must carry the session's form token (`csrf`: an HMAC
  of the principal's id under the fleet's shared key), and, when the browser sends `Origin`, come
  from this host. SameSite=Strict already keeps the cookie off other sites' requests.
- **Cheap refresh.** A GET page answers with a weak `ETag` made from what its view depends on
  (`Version`: the fleet's activity version and whatever else the trigger names), and answers
  304 to a matching `If-None-Match` before reading anything else.
- **Failures.** A domain error is an HTML page with the API's status (503 with `Retry-After`
  for a busy store); anything else a logged 500 page.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

import azure.functions as func

from dashboard import render
from fleet import continuation, errors
from fleet.principals import ANONYMOUS, Permission, Principal, Role
from shared import auth, config, http
from shared.stores import charge

log = logging.getLogger("fleet.dashboard")

COOKIE = "fleet_session"
COOKIE_PATH = "/dashboard"
SIGN_IN = "/dashboard/signin"
#: Largest form accepted: a job's markdown body is at most 65,536 characters, and a browser
#: sends each byte of a character's UTF-8 that is not plain ASCII as `%XX` (an "é" is 6 bytes,
#: an emoji 12), so the largest body the schema allows is up to 768 KiB of form.
MAX_FORM = 800 * 1024
_CSRF = "dashboard-form"
#: Who a page anyone may see acts as when nobody is signed in: it reads nothing.
ANONYMOUS_READER = Principal(id="", name="", role=Role.VIEWER, products=())


@dataclass(frozen=True)
class Page:
    """What a page trigger declares: the permission it needs (None: anyone, signed in or not)."""

    needs: Permission | None
    summary: str


@dataclass
class Request:
    """One browser request as a page trigger sees it: the request, its principal, its form."""

    req: func.HttpRequest
    #: None only on the pages anyone may see (sign-in) when nobody is signed in.
    principal: Principal | None
    csrf: str
    form: dict[str, list[str]]
    #: The page's ETag, for its script's conditional refreshes (None: a page that has none).
    etag: str | None = None
    #: Documents the page's version read, by name, for its handler to render from rather than
    #: read again (the content then is the one the ETag names).
    read: dict[str, Any] = field(default_factory=dict)

    def field(self, name: str, default: str = "") -> str:
        """The form's one value of `name`; a field sent twice is refused, as the API refuses a
        key given twice (which would win is not the sender's to guess)."""
        values = self.form.get(name)
        if values and len(values) > 1:
            raise errors.ValidationFailed(f"{name} is given {len(values)} times", [{"field": name, "message": "repeated"}])
        return values[0].strip() if values else default

    def fields(self, name: str) -> list[str]:
        return [v.strip() for v in self.form.get(name, []) if v.strip()]

    def param(self, name: str) -> str:
        return (self.req.params.get(name) or "").strip()


class Version:
    """What a page's content depends on, turned into its ETag."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def etag(self, request: Request) -> str:
        seen = repr((self.parts, request.principal.id, request.principal.role.value, request.req.url))
        return 'W/"' + hashlib.sha256(seen.encode()).hexdigest()[:20] + '"'


#: A page trigger: the request in, an answer out.
Handler = Callable[[Request], func.HttpResponse]


def page(*, needs: Permission | None, version: Callable[[Request], Version] | None = None) -> Callable[[Handler], Callable]:
    """Declare and serve a page trigger (see the module docstring). `version`: for a GET, what
    the answer depends on; a request whose `If-None-Match` names it is answered 304."""

    def decorate(handler: Handler) -> Callable:
        @functools.wraps(handler)
        def served(req: func.HttpRequest) -> func.HttpResponse:
            with charge.metered() as meter:
                response = _serve(handler, req, needs, version)
            response.headers[charge.HEADER] = charge.header_value(meter.total)
            log.info("%s %s -> %s (%d store responses)", handler.__name__, req.method, response.status_code, meter.responses)
            return response

        summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
        served.page = Page(needs=needs, summary=summary)  # type: ignore[attr-defined]
        return served

    return decorate


def declared(function: Callable[..., Any]) -> Page | None:
    """The `Page` a trigger declared with `page`, None if it is not a page."""
    return getattr(function, "page", None)


def _serve(handler: Handler, req: func.HttpRequest, needs: Permission | None, version) -> func.HttpResponse:
    posting = req.method.upper() == "POST"
    principal: Principal | None = None
    try:
        principal = _principal(req) if needs is not None else _principal_or_none(req)
        if principal is None and needs is not None:
            # A session whose token is refused now (revoked, expired) ends with this answer.
            ended = session_cookie(None, is_secure(req)) if COOKIE in cookies(req) else None
            if posting:
                refused = render.error_page(401, "Sign in", "sign in first")
                if ended:
                    refused.headers["Set-Cookie"] = ended
                return refused
            return redirect(f"{SIGN_IN}?next={quote(_path(req), safe='/')}", ended)
        if needs is not None:
            principal.require(needs)
        with config.acting(principal or ANONYMOUS_READER):
            request = Request(req, principal, form_token(principal) if principal else "", _form(req) if posting else {})
            if posting:
                _check_origin(req)
                if needs is not None and not _csrf_ok(request):
                    raise errors.Forbidden("the form is out of date or was not sent by this dashboard; reload the page")
            tag = version(request).etag(request) if version is not None and not posting else None
            if tag is not None and tag in _if_none_match(req):
                return func.HttpResponse(status_code=304, headers={"ETag": tag, "Cache-Control": "no-cache"})
            request.etag = tag
            response = handler(request)
            if tag is not None and response.status_code == 200:
                response.headers["ETag"] = tag
    except errors.Unauthorized as exc:
        return render.error_page(401, "Sign in", exc.detail)
    except errors.FleetError as exc:
        status = http.status_of(exc)
        for_role = isinstance(exc, errors.Forbidden) and "permission" in exc.extra  # not a form refused
        response = render.error_page(
            status, _TITLES.get(status, "Error"), exc.detail, for_role=for_role, **header(principal)
        )
        wait = http.retry_after(exc)
        if wait is not None:
            response.headers["Retry-After"] = http.retry_after_header(wait)
        return response
    except Exception:
        log.exception("unhandled error in %s", handler.__name__)
        detail = "the coordinator failed to show this page; see its logs"
        return render.error_page(500, "Something went wrong", detail, **header(principal))
    response.headers.setdefault("Cache-Control", "no-cache")
    return response


_TITLES = {400: "Not valid", 403: "Not allowed", 404: "Not found", 409: "Not possible now", 413: "Too large", 503: "Busy"}


def header(principal: Principal | None, csrf: str | None = None) -> dict[str, Any]:
    """What every page's header (and its forms) needs of who is signed in: an error page's too.
    `csrf`: the principal's form token, when the caller has it already."""
    mode = config.auth_mode()
    if csrf is None:
        csrf = form_token(principal) if principal else ""
    return {
        "signed_in": principal is not None,
        "principal": principal,
        "csrf": csrf,
        "can": {p.value: principal.can(p) for p in Permission} if principal else {},
        "auth_off": mode == auth.Mode.OFF,
        "easyauth": mode == auth.Mode.EASYAUTH,
    }

def _principal(req: func.HttpRequest) -> Principal | None:
    """The request's principal; None when it carries no credential at all. A credential that
    is refused (revoked, expired, unknown) is `Unauthorized`, as on the API."""
    mode = config.auth_mode()
    if mode == auth.Mode.OFF:
        return ANONYMOUS
    headers = {k.lower(): v for k, v in req.headers.items()}
    session = cookies(req).get(COOKIE) if "authorization" not in headers else None
    if session:
        headers["authorization"] = f"Bearer {session}"
    if "authorization" not in headers and not (mode == auth.Mode.EASYAUTH and headers.get(auth.EASY_AUTH_HEADER)):
        return None
    try:
        return auth.principal_of(config.context(), mode, headers)
    except errors.Unauthorized:
        if session:  # a session whose token was revoked or expired: sign in again
            return None
        raise


def _principal_or_none(req: func.HttpRequest) -> Principal | None:
    try:
        return _principal(req)
    except errors.Unauthorized:
        return None


def form_token(principal: Principal) -> str:
    """The form token of a principal's pages: anyone can see theirs, nobody can make another's."""
    return continuation.keyed_digest(config.context(), _CSRF, principal.id)


def _csrf_ok(request: Request) -> bool:
    return hmac.compare_digest(request.field("csrf").encode(), request.csrf.encode())


def _check_origin(req: func.HttpRequest) -> None:
    origin = req.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != urlsplit(req.url).netloc:
        raise errors.Forbidden(f"a form posted from {origin[:100]} is not this dashboard's")


def _form(req: func.HttpRequest) -> dict[str, list[str]]:
    raw = req.get_body() or b""
    if len(raw) > MAX_FORM:
        raise http.PayloadTooLarge(f"the form is {len(raw)} bytes; at most {MAX_FORM} are accepted")
    media = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if raw and media != "application/x-www-form-urlencoded":
        raise http.UnsupportedMediaType("a dashboard form is sent as application/x-www-form-urlencoded")
    try:
        return parse_qs(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=1000, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise errors.ValidationFailed("the form could not be read", [{"field": "", "message": "not a form"}]) from None


def cookies(req: func.HttpRequest) -> dict[str, str]:
    """The request's cookies by name (the first of a repeated name)."""
    found: dict[str, str] = {}
    for part in (req.headers.get("cookie") or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in found:
            found[name] = value.strip()
    return found


def session_cookie(token: str | None, secure: bool) -> str:
    """The `Set-Cookie` value that starts (token) or ends (None) a session."""
    flags = f"Path={COOKIE_PATH}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    if token is None:
        return f"{COOKIE}=; Max-Age=0; {flags}"
    return f"{COOKIE}={token}; {flags}"


def redirect(location: str, cookie: str | None = None) -> func.HttpResponse:
    """303 See Other to a path of this site (anything else goes to the overview)."""
    if not local(location, "/"):
        location = "/dashboard/fleet"
    headers = {"Location": location, "Cache-Control": "no-store"}
    if cookie:
        headers["Set-Cookie"] = cookie
    return func.HttpResponse(status_code=303, headers=headers)


def local(target: str, prefix: str) -> bool:
    """Whether `target` (a page to go back to, as a form or a link gave it) is a path of this
    site under `prefix`, fit for a `Location` header: printable ASCII, no space or backslash,
    not `//` (another host)."""
    return target.startswith(prefix) and not target.startswith("//") and _LOCATION.fullmatch(target) is not None


_LOCATION = re.compile(r"[!-\[\]-~]*")  # printable ASCII but space and backslash


def _if_none_match(req: func.HttpRequest) -> set[str]:
    return {tag.strip() for tag in (req.headers.get("if-none-match") or "").split(",") if tag.strip()}


def _path(req: func.HttpRequest) -> str:
    parts = urlsplit(req.url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def is_secure(req: func.HttpRequest) -> bool:
    """Whether the browser reached us over HTTPS (directly, or through Azure's front end)."""
    return urlsplit(req.url).scheme == "https" or (req.headers.get("x-forwarded-proto") or "").lower() == "https"
