"""Credentials out of messages, logs and metadata: URL user info and signed-URL tokens.

Paths and URLs travel into error rows, launch errors, ``summary.json`` and the metadata of every
output file. Two kinds of secrets ride along in URLs:

- user info: ``https://user:password@host/...``, or a bare token in the user's place;
- query (or fragment) parameters that are credentials: the signatures and tokens of signed URLs
  (GCS ``X-Goog-Signature`` and ``X-Goog-Credential``, S3 ``X-Amz-Signature`` and
  ``X-Amz-Security-Token``, Azure SAS ``sig``, CloudFront ``Signature``, ``Policy`` and
  ``Key-Pair-Id``) and API keys or tokens passed as parameters.

:func:`redact_url` rewrites one URL and :func:`redact` every URL inside a text. Scheme, host, path
and the other parameters stay, so a person can still tell which file an error is about::

    >>> redact("no image at https://bob:hunter2@example.com/a.jpg?X-Goog-Signature=abc&w=5")
    'no image at https://REDACTED@example.com/a.jpg?X-Goog-Signature=REDACTED&w=5'
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

__all__ = ["REDACTED", "redact", "redact_obj", "redact_url", "redact_value"]

REDACTED = "REDACTED"

# A URL inside free text: a scheme and "://", then either everything up to the closing quote when
# the URL is quoted (messages quote URLs with repr(), JSON with double quotes; the quote
# characters inside are escaped), or everything up to a blank or a quote character.
_SCHEME_PART = r"[A-Za-z][A-Za-z0-9+.\-]*://"
_URL_IN_TEXT = re.compile(
    rf"(?<=')(?P<single>{_SCHEME_PART}(?:[^'\\\n]|\\.)*)(?=')"
    rf'|(?<=")(?P<double>{_SCHEME_PART}(?:[^"\\\n]|\\.)*)(?=")'
    rf"|(?P<bare>{_SCHEME_PART}[^\s'\"<>`]+)"
)
_SCHEME = re.compile(rf"^{_SCHEME_PART}")
# Parameter names that carry credentials. Deliberately broad: hiding a harmless parameter costs
# nothing, printing a live signature costs a leak.
_SECRET_PARAMETER = re.compile(
    r"sig|token|key|secret|pass|pwd|credential|auth|session|policy|code", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """Hides the credentials of one URL: its user info and its secret parameters.

    Args:
        url: a URL (``scheme://...``); anything else is returned unchanged.

    Returns:
        The URL with user info replaced by ``REDACTED`` and the value of every query or fragment
        parameter whose name looks like a credential (signature, token, key, secret, password...)
        replaced by ``REDACTED``.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return url
    head, rest = scheme.group(), url[scheme.end() :]
    # By the RFC the authority ends at the first "/", "?" or "#", and user info is what precedes
    # its last "@". But a password may hold any of "/?#@:" unescaped ("http://u:p/ss@host/x"),
    # and such a URL reads as another valid one (host "u", port or path "p/ss@host/x"): no
    # parse can tell. So user info is taken to end at the last "@" of the whole URL whenever
    # that "@" is in the authority or a ":" (a password's separator) comes before it; hiding
    # an "@" of a path costs a readable host, missing one costs a leaked password.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@")
    if at >= 0 and (at < end or ":" in rest[:at]):
        return head + REDACTED + _redact_parameters(rest[at:])
    return head + rest[:end] + _redact_parameters(rest[end:])


def _redact_parameters(tail: str) -> str:
    """Redacts secret parameters in the query and the fragment of a URL's path part."""
    match = re.search(r"[?#]", tail)
    if match is None:
        return tail
    path, parameters = tail[: match.start()], tail[match.start() :]
    # Keep every separator ("?", "#", "&", ";") and rewrite the name=value pieces between them.
    pieces = re.split(r"([?#&;])", parameters)
    for i, piece in enumerate(pieces):
        name, equals, _ = piece.partition("=")
        if equals and _SECRET_PARAMETER.search(unquote(name)):
            pieces[i] = f"{name}={REDACTED}"
    return path + "".join(pieces)


def redact(text: str) -> str:
    """Redacts every URL found in ``text`` (see :func:`redact_url`); the rest is unchanged."""
    if "://" not in text:  # the common case: no URL, no regex work
        return text
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    if match.group("bare") is None:  # quoted: the whole URL up to its closing quote
        return redact_url(match.group())
    # Punctuation that ends a sentence or closes a bracket after a URL is not part of it.
    url = match.group()
    bare = url.rstrip(".,;:!?)]}")
    return redact_url(bare) + url[len(bare) :]


def redact_value(value: str) -> str:
    """Redacts one value (an option, a path): a whole URL when it starts with a scheme, whatever
    characters it holds (blanks, quotes), else every URL inside it (see :func:`redact`)."""
    return redact_url(value) if _SCHEME.match(value) else redact(value)


def redact_obj(value: Any) -> Any:
    """Redacts every string inside JSON-like data (dicts, lists, tuples), keys left as they are.

    For what is written as JSON: options recorded in metadata and in ``summary.json``.
    """
    if isinstance(value, str):
        return redact_value(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(v) for v in value)
    return value
