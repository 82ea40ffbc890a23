"""Exact money: Vonage's decimal-string prices as text and as integer nano-units.

Prices are kept as the text Vonage sent (``price``) and as an integer count of
billionths of the currency unit (``price_nano``), so SQLite sums them exactly with
integer arithmetic. No binary floating point touches a price.
"""

import re
from decimal import Decimal

SCALE = 9
NANO = 10**SCALE
# Below 100,000 units with up to nine decimal places: far beyond any per-message charge,
# and a signed 64-bit sum holds 92,000 such maximal prices (billions of real ones).
PRICE_PATTERN = re.compile(r"(0|[1-9][0-9]{0,4})(\.[0-9]{1,9})?")

# SQL that turns an integer nano-amount back into its shortest exact decimal text.
# rtrim of zeros stops at the '.', which the second rtrim removes when nothing follows.
SQL_FORMAT_NANO = (
    "CASE WHEN {n} IS NULL THEN NULL ELSE rtrim(rtrim(printf('%d.%09d', {n} / {nano}, "
    "{n} % {nano}), '0'), '.') END"
)


def sql_format(expression):
    """SQL expression formatting the non-negative nano-amount ``expression`` as decimal text."""
    return SQL_FORMAT_NANO.format(n=f"({expression})", nano=NANO)


def is_price(text):
    """True when ``text`` is a price this store keeps exactly."""
    return isinstance(text, str) and PRICE_PATTERN.fullmatch(text) is not None


def to_nano(text):
    """'0.0333' -> 33300000; None stays None."""
    if text is None:
        return None
    whole, _, fraction = text.partition(".")
    return int(whole) * NANO + int(fraction.ljust(SCALE, "0") or 0)


def from_nano(nano):
    """33300000 -> '0.0333', the shortest exact decimal text."""
    if nano is None:
        return None
    return format_decimal(Decimal(nano).scaleb(-SCALE))


def format_decimal(value):
    """Decimal -> plain text without exponent or trailing zeros ('0.3', '10', '0.0333')."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
