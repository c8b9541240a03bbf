"""JSON text of outgoing messages, fast: the server's largest serialization cost under load.

Every frame to a tablet or a console, and every prediction's GeoJSON (tens of kB, up to a few
per second per incident), is serialized here. orjson does it several times faster than the
standard library; the text is the same JSON, without the standard library's spaces after
``,`` and ``:``. NaN and infinities become ``null`` (the standard library would write
``NaN``, which is not JSON and which a browser's ``JSON.parse`` rejects). A value orjson does
not take (an exotic type) falls back to :func:`json.dumps`.

Not for the audit trail: its hash chain is computed over :func:`serving.audit.canonical_json`,
whose exact text must not change between versions.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (see the module's docstring)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:
        return json.dumps(_strict(value), separators=(",", ":"), allow_nan=False)


def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (the fallback's JSON stays JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value
