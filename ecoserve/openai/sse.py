"""Server-sent events, split incrementally from a byte stream.

vLLM writes one ``data: <json>\\n\\n`` event per chunk. Network reads cut those
anywhere, and a fast upstream packs many events into one read; the splitter
returns every complete event of a read at once, so the relay handles a read
as one batch (one policy update, one write to the client) however many tokens
it carries.
"""

from __future__ import annotations

_SEP = b"\n\n"
_DATA = b"data:"


class SSESplitter:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The ``data`` payloads of the events completed by ``data`` (comments,
        ``event:``/``id:`` lines and empty events are dropped)."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:  # CRLF framing is legal SSE; normalise it
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(_SEP)
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 2 :]
        out = []
        for event in buf[:end].split(_SEP):
            if event.startswith(b"data: ") and b"\n" not in event:  # the common case
                out.append(event[6:])
                continue
            lines = [ln[6:] if ln[5:6] == b" " else ln[5:] for ln in event.split(b"\n") if ln.startswith(_DATA)]
            if lines:
                out.append(b"\n".join(lines))
        return out

    @property
    def leftover(self) -> bytes:
        """Bytes of an unterminated event (a truncated stream)."""
        return self._buf
