"""What is never written to a log or an error body: a function key's value (`code`) and an
API token's secret, wherever a request line, a path or a message quoting what was sent holds
them. The dev host redacts its logs and its own answers; the app, its problem bodies and the
dashboard's error pages (`shared.http.problem`, `dashboard.render.error_page`)."""
from __future__ import annotations

import re
import urllib.parse
from typing import Any

# A query parameter, as a request line spells it (``;`` too: a client may mean it as ``&``).
_QUERY_PARAMETER = re.compile(r"(?<=[?&;])([^=&;#\s'\"]*)=([^&;#\s'\"]*)")
# An API token, its underscores as they are or percent-encoded (a token pasted into a path,
# say `DELETE /fleet/tokens/<token>` for its id): its id is kept, its secret is not.
_TOKEN_SECRET = re.compile(r"(fleet(?:_|%5[Ff])[0-9a-fA-F]{16}(?:_|%5[Ff]))[A-Za-z0-9_%-]+")


def redact(text: str) -> str:
    """``text`` (a request line, a path, or a message quoting one) with the value of every
    ``code`` query parameter, however its name is spelt or encoded, and the secret of any API
    token replaced by ``REDACTED``."""

    def hide(found: re.Match[str]) -> str:
        name = urllib.parse.unquote_plus(found.group(1))
        return f"{found.group(1)}=REDACTED" if name.lower() == "code" else found.group(0)

    return _TOKEN_SECRET.sub(r"\1REDACTED", _QUERY_PARAMETER.sub(hide, text))


def redact_strings(value: Any) -> Any:
    """``value`` (a JSON document) with ``redact`` applied to every string in it, keys too:
    redacting the JSON text instead could eat the backslash of an escaped quote."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_strings(k): redact_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_strings(v) for v in value]
    return value
