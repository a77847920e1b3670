"""Text from outside, made safe to print, to write down and to use as a file name.

One home for each rule: credentials in URLs (``mask_url``, ``mask_text``), secret-looking
environment values (``mask_env_value``), control characters in printed identifiers
(``printable``) and names that become file or folder names (``file_name``).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "CREDENTIAL",
                "AUTH")
"""Upper-case fragments of variable or query-parameter names whose values are never shown."""

# scheme://userinfo@ anywhere in a text: the userinfo stops at the first '@' before any '/'
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _is_secret_name(name: str) -> bool:
    upper = name.upper().replace("-", "_")
    return any(word in upper for word in SECRET_WORDS) or upper in ("KEY", "SIG", "SIGNATURE")


def mask_url(url: str) -> str:
    """``url`` with its user info and secret-looking query values replaced by ``***``.

    Example:
        >>> mask_url("http://user:pw@collector:4318/v1/metrics?token=abc&x=1")
        'http://***:***@collector:4318/v1/metrics?token=***&x=1'
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_USERINFO.sub(lambda m: m["scheme"] + _masked_userinfo(m["userinfo"]) + "@",
                                 url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{_masked_userinfo(userinfo)}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _is_secret_name(k) else v) for k, v in pairs],
                              safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _masked_userinfo(userinfo: str) -> str:
    return f"{MASK}:{MASK}" if ":" in userinfo else MASK


def mask_text(text: str) -> str:
    """``text`` with every URL in it passed through ``mask_url`` (messages, command lines).

    Example:
        >>> mask_text("cannot reach http://u:p@host:4318: refused")
        'cannot reach http://***:***@host:4318: refused'
    """
    if "://" not in text:
        return text
    return _URL.sub(lambda m: mask_url(m.group(0)), text)


def mask_env_value(name: str, value: str) -> str:
    """An environment value safe to print: header values, secrets and URL credentials masked.

    Example:
        >>> mask_env_value("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer x")
        'authorization=***'
    """
    upper = name.upper()
    if "HEADERS" in upper:
        pairs = []
        for pair in value.split(","):
            if "=" in pair:
                pairs.append(f"{pair.split('=', 1)[0].strip()}={MASK}")
            elif pair.strip():
                pairs.append(MASK)
        return ",".join(pairs)
    if _is_secret_name(upper):
        return MASK
    return mask_text(value)


def printable(text: str) -> str:
    """``text`` with newlines and other control characters escaped as Python writes them.

    An ordinary identifier comes back unchanged (the old API's stdout lines stay exact).

    Example:
        >>> printable("density"), printable("a\\nb")
        ('density', 'a\\\\nb')
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def file_name(value: str) -> str:
    """``value`` as one path component: separators, ``..``, NUL and control characters become
    ``_``, so the name stays inside its folder. Unchanged for an ordinary name (check with ``==``).

    Example:
        >>> file_name("20261124-235959-1a2b3c"), file_name("../escaped")
        ('20261124-235959-1a2b3c', '___escaped')
    """
    safe = "".join("_" if c in "/\\\0" or not c.isprintable() else c for c in value)
    safe = safe.replace("..", "__")
    if safe in ("", "."):
        safe = "_"
    return safe
