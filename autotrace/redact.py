"""Secrets out of URLs before they become span attributes."""

from __future__ import annotations

REDACTED = "REDACTED"

# Query keys whose values are secrets (compared lower-case): credentials and the
# signatures of pre-signed URLs (the semantic conventions name the last four).
SENSITIVE_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "session",
        "sessionid",
        "sig",
        "signature",
        "awsaccesskeyid",
        "x-goog-signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)


def redact_query(query: str) -> str:
    """The query string with sensitive values replaced; order and the rest kept as they are."""
    if not query:
        return query
    parts = query.split("&")
    changed = False
    for index, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if sep and value and is_sensitive(key):
            parts[index] = key + "=" + REDACTED
            changed = True
    return "&".join(parts) if changed else query


def is_sensitive(key: str) -> bool:
    """Whether a query key names a secret (any case, URL-encoded or not)."""
    lowered = key.lower()
    if "%" in lowered or "+" in lowered:
        from urllib.parse import unquote_plus

        lowered = unquote_plus(lowered)
    return lowered in SENSITIVE_QUERY_KEYS
