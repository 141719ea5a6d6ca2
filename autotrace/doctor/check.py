"""A check's result, and the secrets kept out of its text."""

from __future__ import annotations

OK, WARN, FAIL = "OK", "WARN", "FAIL"


class Check:
    """One check: its status, its name, what was found, and for WARN and FAIL the fix."""

    __slots__ = ("fix", "message", "name", "status")

    def __init__(self, status: str, name: str, message: str, fix: str = "") -> None:
        self.status, self.name, self.message, self.fix = status, name, message, fix

    def as_dict(self) -> dict:
        return {"status": self.status, "name": self.name, "message": self.message, "fix": self.fix}

    def __repr__(self) -> str:
        return f"Check({self.status!r}, {self.name!r}, {self.message!r}, {self.fix!r})"


def redact(text: str) -> str:
    """A URL (or text holding one) with user info and secret query values hidden."""
    from urllib.parse import urlsplit

    from ..config import redact_url
    from ..redact import redact_query

    url = redact_url(text)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return parts._replace(query=redact_query(parts.query)).geturl() if parts.query else url


def secrets_of(url: str) -> list[str]:
    """The secret parts of ``url`` (user info, sensitive query values), to scrub from any text."""
    from urllib.parse import unquote, urlsplit

    from ..redact import is_sensitive

    try:
        parts = urlsplit(url)
    except ValueError:
        return [url.rsplit("@", 1)[0]] if "@" in url else []
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found += [userinfo, *userinfo.split(":", 1)]
    for part in parts.query.split("&"):
        key, sep, value = part.partition("=")
        if sep and value and is_sensitive(key):
            found.append(value)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub(checks: list[Check], secrets: list[str]) -> list[Check]:
    """Every check with the given secrets replaced (an exception's text may quote the URL)."""
    if not secrets:
        return checks
    for check in checks:
        for secret in secrets:
            check.message = check.message.replace(secret, "REDACTED")
            check.fix = check.fix.replace(secret, "REDACTED")
    return checks
