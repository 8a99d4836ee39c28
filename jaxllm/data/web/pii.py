"""PII anonymisation: e-mail addresses, IP addresses, phone numbers and US SSNs become placeholders.

The patterns need separators or structure (`@`, dotted quads of valid octets, grouped digits) so
that years, versions, ports, prices and other ordinary numbers are left alone.
"""
from __future__ import annotations

import re
from typing import Optional

from .config import PiiConfig

Doc = dict

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+(?:@|\s?\[at\]\s?)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
                  r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?![\w:])")
# dotted numbers after these words are section/version numbers, not addresses
_NOT_IP_BEFORE = re.compile(r"(?:section|sections|chapter|version|release|table|figure|step|§|v)\s*$",
                            re.IGNORECASE)
SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# North American numbers with separators: (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567
PHONE_NA = re.compile(r"(?<![\w+])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w-])")
# International: +CC followed by 6-14 digits in groups (+44 20 7946 0958, +49-30-1234567)
PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}(?![\w-])")


def _is_numbering(m: re.Match) -> bool:
    return bool(_NOT_IP_BEFORE.search(m.string[max(0, m.start() - 12):m.start()]))


def _not_ipv6(m: re.Match) -> bool:
    """Compressed forms need >= 3 groups and a digit, so `a::b` or `std::cout` stay text."""
    ip = m.group(0)
    return len([g for g in ip.split(":") if g]) < 3 or not any(c.isdigit() for c in ip)


def anonymize_text(text: str, cfg: PiiConfig = PiiConfig()) -> tuple[str, dict[str, int]]:
    """Text with PII replaced, and how many of each kind were replaced."""
    counts: dict[str, int] = {}

    def sub(pattern: re.Pattern, placeholder: str, kind: str, s: str, keep=None) -> str:
        repl = placeholder if keep is None else (
            lambda m: m.group(0) if keep(m) else placeholder)
        before = s
        s, n = pattern.subn(repl, s)
        if keep is not None:
            n = sum(1 for m in pattern.finditer(before) if not keep(m))
        if n:
            counts[kind] = counts.get(kind, 0) + n
        return s

    if cfg.email:
        text = sub(EMAIL, cfg.email_placeholder, "email", text)
    if cfg.ssn:
        text = sub(SSN, cfg.ssn_placeholder, "ssn", text)
    if cfg.ip:
        text = sub(IPV4, cfg.ip_placeholder, "ip", text, keep=_is_numbering)
        text = sub(IPV6, cfg.ip_placeholder, "ip", text, keep=_not_ipv6)
    if cfg.phone:
        text = sub(PHONE_INTL, cfg.phone_placeholder, "phone", text)
        text = sub(PHONE_NA, cfg.phone_placeholder, "phone", text)
    return text, counts


def anonymize(doc: Doc, cfg: PiiConfig) -> tuple[Optional[Doc], Optional[str]]:
    """PII stage: never drops a document; `meta['pii']` counts replacements by kind."""
    text, counts = anonymize_text(doc["text"], cfg)
    meta = dict(doc["meta"], pii=counts) if counts else doc["meta"]
    return dict(doc, text=text, meta=meta), None
