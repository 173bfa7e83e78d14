"""How rlmpipe writes money, spans of time and moments for people: the same way in the terminal
(``runs show``, ``runs list``, ``runs watch``, the live progress) and in the run report."""

from __future__ import annotations

import datetime


def usd(value: float | None) -> str:
    """Dollars with enough decimals that a cheap call does not read as $0."""
    if value is None:
        return "unknown"
    return "$0" if value == 0 else f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}"


def cost_text(cost: float | None, unpriced: int, calls_with_tokens: int | None = None) -> str:
    """A cost, honest about unknown prices: 'unknown' if no call had a price, '>= $x' if some had none."""
    if cost is None or (unpriced and not cost
                        and (calls_with_tokens is None or unpriced >= calls_with_tokens)):
        return "unknown"  # no call with tokens had a price: $0 would be a lie
    return f"≥ {usd(cost)}" if unpriced else usd(cost)


def duration(seconds: float | None) -> str:
    """A span of time, as people read it: 0.25s, 12s, 2m05s, 1h05m, 3d02h."""
    if seconds is None:
        return ""
    negative, seconds = seconds < 0, abs(seconds)
    if seconds < 60:  # fewer decimals the longer it is, trailing zeros dropped
        decimals = 3 if seconds < 1 else 2 if seconds < 10 else 1
        text = f"{seconds:.{decimals}f}".rstrip("0").rstrip(".") + "s" if seconds else "0s"
    else:  # two units: the largest one and the next, rounded to the next
        unit, base, large, small = ((1, 60, "m", "s") if seconds < 3600 else (60, 60, "h", "m")
                                    if seconds < 86400 else (3600, 24, "d", "h"))
        amount, rest = divmod(round(seconds / unit), base)
        text = f"{amount}{large}{rest:02d}{small}" if rest else f"{amount}{large}"
    return ("-" if negative else "") + text


def when(epoch: float | None) -> str:
    """A moment, in local time with its zone: 2025-05-01 14:03:07 CEST."""
    if not epoch:
        return ""
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()
