"""PII redaction: e-mail addresses, phone numbers, IPv4/IPv6 addresses and payment-card numbers.

Hand-written patterns rather than a library: the libraries that detect PII well (presidio, phonenumbers) need a
language model or a region per text, are 10–100× slower, and are not deterministic across versions; these few
patterns are validated (IP addresses by `ipaddress`, card numbers by the Luhn check) to keep false positives low.
"""
from __future__ import annotations

import ipaddress
import re

PII_TYPES = ("email", "credit_card", "ipv6", "ipv4", "phone")
PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>", "ipv6": "<IP_ADDRESS>",
                "ipv4": "<IP_ADDRESS>", "phone": "<PHONE>"}

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13–19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# North-American numbers with separators, or international ones starting with +; a bare digit run is never a phone.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"
    r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    # Issuer prefixes (Amex/Diners 3, Visa 4, Mastercard 2/5, Discover 6) + Luhn: large integers in code and
    # logs pass Luhn one time in ten by chance, an issuer prefix too much less often.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_ok(digits)


def _is_ipv4(match: str) -> bool:
    try:
        ipaddress.IPv4Address(match)
    except ValueError:
        return False
    return True


def _is_ipv6(match: str) -> bool:
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    # 'be::' and 'add::' (reST literal markers) are valid addresses too: ask for two groups and a digit.
    return sum(bool(group) for group in match.split(":")) >= 2 and any(c.isdigit() for c in match)


def _phone_ok(match: str) -> bool:
    return 10 <= sum(c.isdigit() for c in match) <= 15


_CHECKS = {"email": (_EMAIL, None), "credit_card": (_CARD, _is_card), "ipv6": (_IPV6, _is_ipv6),
           "ipv4": (_IPV4, _is_ipv4), "phone": (_PHONE, _phone_ok)}


def _may_contain(kind: str, text: str) -> bool:
    """A cheap pre-check: most texts hold no '@' and few digits, so most patterns never run."""
    if kind == "email":
        return "@" in text
    if kind == "ipv6":
        return text.count(":") >= 2
    return _DIGIT.search(text) is not None


_DIGIT = re.compile(r"\d")


def redact_pii(text: str, *, types: tuple[str, ...] | list[str] = PII_TYPES) -> tuple[str, dict[str, int]]:
    """Returns the text with each found item replaced by its placeholder, and the count per type found.

    Types run in PII_TYPES order (cards before phones, IPv6 before IPv4), so a match is counted once.
    """
    counts: dict[str, int] = {}
    for kind in PII_TYPES:
        if kind not in types:
            continue
        pattern, valid = _CHECKS[kind]
        if not _may_contain(kind, text):
            continue

        def replace(match: re.Match, kind=kind, valid=valid) -> str:
            if valid is not None and not valid(match.group(0)):
                return match.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, counts
