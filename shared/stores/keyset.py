"""Keyset continuation tokens, as both adapters hand them out: the last document's order values.

A page after a token is read as "the documents after these values in the query's order", a
range the index that serves the order starts at, so reading page k costs one page, where an
offset costs k. The adapters spell "after" each in their own SQL (`cosmos_query`,
`sqlite_query`); the token is the same for both.

A token is base64url (unpadded) JSON `{"o": [field, …], "v": [[value] or [], …]}`. It names the
fields of the order it pages by, so a token of a query paging by another order is refused rather
than read as a position in this one. Each value is wrapped in a list, empty for a field the
document lacks: Cosmos orders an absent field before null, so a position must tell them apart.
Tokens are opaque to callers (the API seals them, `fleet.continuation`), but decoding still
trusts nothing: a token not in the one form `encode` writes, or of another order, raises
`ValueError`, which the API answers with a 400; an adapter refuses as well the values its own
tokens cannot hold (`sqlite_query.position`).
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

#: The value of a field the document lacks.
ABSENT: Any = object()
#: What an order key holds, and so a position: JSON scalars.
SCALARS = (type(None), bool, int, float, str)


def encode(fields: Sequence[str], values: Sequence[Any]) -> str:
    """The token of the position `values` (one per field of the order, `ABSENT` for a missing
    field) in an order by `fields`."""
    wrapped = [[] if value is ABSENT else [value] for value in values]
    raw = json.dumps({"o": list(fields), "v": wrapped}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(fields: Sequence[str], token: str) -> list[Any]:
    """The position `token` holds, one value per field (`ABSENT` for a missing one);
    `ValueError` for a malformed token or one of a query paging by another order."""
    try:
        raw = json.loads(_unb64(token))
        if not isinstance(raw, dict) or set(raw) != {"o", "v"}:
            raise ValueError("not a continuation token")
        if raw["o"] != list(fields):
            raise ValueError("it belongs to a query in another order")
        values = raw["v"]
        if not (isinstance(values, list) and len(values) == len(fields)):
            raise ValueError("not one value per order key")
        if not all(isinstance(v, list) and len(v) <= 1 for v in values):
            raise ValueError("a value is not wrapped")
        if not all(isinstance(v[0], SCALARS) for v in values if v):
            raise ValueError("an order value is not a JSON scalar")
        return [v[0] if v else ABSENT for v in values]
    except (ValueError, TypeError, RecursionError) as exc:  # binascii.Error, UnicodeDecodeError: ValueErrors
        raise ValueError(f"bad continuation token: {exc}") from None


def _unb64(token: str) -> bytes:
    """The bytes of a token in the one spelling `encode` writes: unpadded base64url."""
    if not isinstance(token, str):
        raise TypeError("not a string")
    raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        raise binascii.Error("not canonical base64url")
    return raw
