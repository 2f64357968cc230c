"""HOST:PORT as people write it in a config file or on the command line."""

from __future__ import annotations


def parse_address(text: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:port"); ValueError names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected HOST:PORT, got an empty value")
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected HOST:PORT, got {text!r} (no port)")
        if ":" in host:
            raise ValueError(f"write an IPv6 address as [ADDRESS]:PORT, got {text!r}")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {text!r} (no host)")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)
