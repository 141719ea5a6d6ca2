from __future__ import annotations

import pytest

from autotrace.redact import REDACTED, SENSITIVE_QUERY_KEYS, redact_query


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", ""),
        ("a=1&b=2", "a=1&b=2"),
        ("token=abc", "token=REDACTED"),
        ("q=shoes&token=abc&page=2", "q=shoes&token=REDACTED&page=2"),
        ("password=hunter2&user=alice", "password=REDACTED&user=alice"),
        # pre-signed URLs (the semantic conventions' list), any case
        (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=deadbeef&X-Amz-Expires=60",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=60",
        ),
        ("AWSAccessKeyId=AKIA&Signature=abc&Expires=1", "AWSAccessKeyId=REDACTED&Signature=REDACTED&Expires=1"),
        ("sig=abc&X-Goog-Signature=def", "sig=REDACTED&X-Goog-Signature=REDACTED"),
        ("TOKEN=abc&Password=x&API_KEY=y", "TOKEN=REDACTED&Password=REDACTED&API_KEY=REDACTED"),
        # percent-encoded or plus-encoded keys: the key is kept as sent, the value goes
        ("%74oken=abc", "%74oken=REDACTED"),
        ("api%5Fkey=abc&x=1", "api%5Fkey=REDACTED&x=1"),
        ("X%2DAmz%2DSignature=abc", "X%2DAmz%2DSignature=REDACTED"),
        ("%zz=1&token=2", "%zz=1&token=REDACTED"),  # malformed escapes do not break it
        # keys without values: nothing to hide, kept as they are
        ("token", "token"),
        ("token=", "token="),
        ("token&password=&page=1", "token&password=&page=1"),
        # repeated keys, values with '=', empty parts: order and the rest untouched
        ("token=a&token=b", "token=REDACTED&token=REDACTED"),
        ("token=a=b=c&x=y=z", "token=REDACTED&x=y=z"),
        ("&&token=x&&", "&&token=REDACTED&&"),
        ("=value&token=x", "=value&token=REDACTED"),
        # lookalike keys are not secrets
        ("tokens=1&my_token=2&passwordless=3&keyword=4", "tokens=1&my_token=2&passwordless=3&keyword=4"),
        ("next=%2Flogin%3Ftoken%3Dabc", "next=%2Flogin%3Ftoken%3Dabc"),  # inside a value: not a key
        ("caf\u00e9=\u00e9&token=\u00e9", "caf\u00e9=\u00e9&token=REDACTED"),
    ],
)
def test_redact_query(query, expected):
    assert redact_query(query) == expected


def test_unchanged_query_is_the_same_object():
    query = "a=1&b=2&c"
    assert redact_query(query) is query


def test_every_sensitive_key_is_redacted():
    for key in SENSITIVE_QUERY_KEYS:
        assert redact_query(f"a=1&{key}=v&b=2") == f"a=1&{key}={REDACTED}&b=2"
        assert redact_query(f"{key.upper()}=v") == f"{key.upper()}={REDACTED}"


def test_keys_are_lower_case():
    assert all(key == key.lower() for key in SENSITIVE_QUERY_KEYS)


def test_long_query():
    query = "&".join(f"k{i}=v{i}" for i in range(5000)) + "&token=s3cret"
    result = redact_query(query)
    assert result.endswith("&token=REDACTED") and "s3cret" not in result
    assert result.count("&") == query.count("&")
