"""TFTP option negotiation for read requests: blksize (RFC 2348), timeout and tsize (RFC 2349),
windowsize (RFC 7440), framed by RFC 2347.

Pure: ``negotiate`` maps what the client asked for to what the server grants (the OACK) and
the transfer settings. Unknown or invalid options are left out of the OACK, as RFC 2347 allows;
values above the server's limits are lowered to them.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
DEFAULT_TIMEOUT = 1.0
MAX_TIMEOUT = 255


@dataclass(frozen=True)
class Limits:
    """What the server is willing to grant."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    # A window is kept in memory until acknowledged (and one more is built ahead): cap its bytes.
    max_window_bytes: int = 256 * 1024
    default_timeout: float = DEFAULT_TIMEOUT
    retries: int = 5


@dataclass(frozen=True)
class Settings:
    """The parameters one transfer runs with."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = DEFAULT_TIMEOUT
    retries: int = 5


@dataclass(frozen=True)
class Negotiated:
    settings: Settings
    oack: tuple[tuple[str, str], ...]  # empty: send no OACK, start with DATA 1


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 10 else None


def negotiate(
    requested: tuple[tuple[str, str], ...], file_size: int | None, limits: Limits = Limits()
) -> Negotiated:
    """Grant the requested options; ``file_size`` None means tsize is not offered (netascii)."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.default_timeout
    granted: list[tuple[str, str]] = []
    for name, value in requested:
        number = _int(value)
        if name == "blksize":
            if number is None or number < MIN_BLKSIZE:
                continue
            blksize = min(number, limits.max_blksize, MAX_BLKSIZE)
            granted.append((name, str(blksize)))
        elif name == "windowsize":
            if number is None or number < 1:
                continue
            windowsize = min(number, limits.max_windowsize, 65535)
            granted.append((name, str(windowsize)))
        elif name == "timeout":
            if number is None or not 1 <= number <= MAX_TIMEOUT:
                continue
            timeout = float(number)
            granted.append((name, str(number)))
        elif name == "tsize":
            if file_size is None or number is None:
                continue
            granted.append((name, str(file_size)))
    fits = max(1, limits.max_window_bytes // blksize)
    if windowsize > fits:
        windowsize = fits
        granted = [(k, str(fits) if k == "windowsize" else v) for k, v in granted]
    settings = Settings(blksize, windowsize, timeout, limits.retries)
    return Negotiated(settings, tuple(granted))
