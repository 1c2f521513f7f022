"""Content-Encoding of request bodies: gzip and deflate are decoded before a view reads the
body, any other coding is refused (415), never ignored.

The compressed body is bounded by max_body_bytes like any body (Nginx and Werkzeug check
it), and so is the decoded one: a few kilobytes of gzip can inflate to gigabytes, so
decoding stops one byte past the limit and the request gets the same 413 as a large body.
"""

from __future__ import annotations

import io
import zlib
from typing import IO

from flask import Flask, Request, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.utils import cached_property

from service.errors import BadRequest, UnsupportedMediaType

HEADER = "Content-Encoding"
IDENTITY = "identity"
# zlib's window bits for each coding (RFC 9110 8.4.1): gzip's header and trailer, and the
# zlib format that HTTP's "deflate" names.
WINDOW_BITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}
SUPPORTED = (*WINDOW_BITS, IDENTITY)


def codings(header: str) -> list[str]:
    """The codings of a Content-Encoding header in the order they were applied, without
    identity."""
    names = [part.strip().lower() for part in header.split(",")]
    return [name for name in names if name and name != IDENTITY]


def check(header: str) -> list[str]:
    """The codings to undo, or UnsupportedMediaType for one this service cannot undo."""
    found = codings(header)
    unknown = [name for name in found if name not in WINDOW_BITS]
    if unknown:
        raise UnsupportedMediaType(
            f"Content-Encoding {', '.join(map(repr, unknown))} is not supported: send "
            "gzip, deflate or an unencoded body",
            details={"content_encoding": header, "supported": list(SUPPORTED)},
            code="unsupported_content_encoding",
        )
    return found


def decode(data: bytes, coding: str, limit: int | None) -> bytes:
    """One coding undone, the result at most ``limit`` bytes (RequestEntityTooLarge past it).
    A gzip body may hold several members, one after the other."""
    out = bytearray()
    remaining = data
    while True:
        decoder = zlib.decompressobj(WINDOW_BITS[coding])
        budget = 0 if limit is None else limit + 1 - len(out)
        try:
            out += decoder.decompress(remaining, budget)
        except zlib.error as exc:
            raise _invalid(coding, exc) from None
        if limit is not None and len(out) > limit:
            raise RequestEntityTooLarge()
        if not decoder.eof:
            raise _invalid(coding, "the compressed data ends early")
        remaining = decoder.unused_data
        if not remaining or coding == "deflate":
            break
    if remaining:
        raise _invalid(coding, "data follows the compressed stream")
    return bytes(out)


def _invalid(coding: str, reason: object) -> BadRequest:
    return BadRequest(
        f"the body is not valid {coding} data ({reason})",
        details={"content_encoding": coding},
        code="invalid_content_encoding",
    )


class DecodingRequest(Request):
    """A Flask request whose body stream is the decoded body."""

    def get_data(  # type: ignore[override]
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> bytes | str:
        if not (cache or as_text or parse_form_data):
            body = self._plain_body()
            if body is not None:
                return body
        return super().get_data(cache, as_text, parse_form_data)

    def _plain_body(self) -> bytes | None:
        """The body read straight from the server's input when nothing stands in between:
        no Content-Encoding, no chunks, a Content-Length within the limit, a stream nobody
        has read. Werkzeug's wrapped stream would read the same bytes, at a dozen µs more a
        request; anything else (a limit to enforce, a coding to undo) goes through it."""
        environ = self.environ
        length = environ.get("CONTENT_LENGTH")
        if (
            not length
            or not (length.isascii() and length.isdigit())
            or "stream" in self.__dict__
            or environ.get("HTTP_CONTENT_ENCODING")
            or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            return None
        size = int(length)
        limit = self.max_content_length
        if limit is not None and size > limit:
            return None
        data = environ["wsgi.input"].read(size)
        if len(data) != size:
            raise ClientDisconnected()  # what Werkzeug's stream raises for a short body
        return data

    @cached_property
    def stream(self) -> IO[bytes]:
        raw = super().stream  # Werkzeug's, bounded by the length and max_body_bytes
        found = check(self.headers.get(HEADER, ""))
        if not found:
            return raw
        data = raw.read()
        # Undone in the reverse order of the header (RFC 9110: listed as applied).
        for coding in reversed(found):
            data = decode(data, coding, self.max_content_length)
        return io.BytesIO(data)


def init_app(app: Flask) -> None:
    app.request_class = DecodingRequest

    @app.before_request
    def refuse_unknown_codings() -> None:
        # Before any view runs, so that a route which reads no body refuses one too.
        header = request.headers.get(HEADER)
        if header and (request.content_length or request.headers.get("Transfer-Encoding")):
            check(header)
