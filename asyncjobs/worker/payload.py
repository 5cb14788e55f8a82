"""Decode a job's ``data`` field without letting one job stall the event loop.

Small payloads (the common case: a few hundred bytes) are decoded inline, with
no thread hop; anything that is, or inflates to, more than
:data:`INLINE_LIMIT` is decoded in a worker thread, with the
``--max-payload-size`` cap applied while inflating either way.
"""

from __future__ import annotations

import asyncio

from asyncjobs.protocol.codec import Call, PayloadTooLargeError, call_from_payload, decode_call, inflate
from asyncjobs.protocol.serializers import Serializer

#: Payloads up to this size (compressed and inflated) are decoded on the event loop.
INLINE_LIMIT = 8 * 1024  # the bounds walk (picklescan) costs ~1 µs per opcode: at most a few ms on the loop


async def decode_payload(data: bytes, serializer: Serializer, max_size: int) -> Call:
    """:func:`~asyncjobs.protocol.codec.decode_call`, off the loop when the payload is large."""
    small = min(max_size, INLINE_LIMIT)
    if len(data) <= small:
        try:
            payload = inflate(data, small)  # bounded work: at most ``small`` bytes of output
        except PayloadTooLargeError:
            if max_size <= small:
                raise
        else:
            return call_from_payload(payload, serializer)
    return await asyncio.to_thread(decode_call, data, serializer, max_size)


__all__ = ["INLINE_LIMIT", "decode_payload"]
