"""Turn one request datagram into a ready read transfer, or the ERROR packet that refuses it.

Opens the file (through ``vnet.tftp.paths``) but sends nothing: the transport does that.
The caller owns the returned file descriptor and closes it when the transfer ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vnet.tftp.options import Limits, negotiate
from vnet.tftp.packet import (
    ErrorCode,
    MalformedPacket,
    Opcode,
    Request,
    encode_oack,
    parse_request,
)
from vnet.tftp.paths import OpenFile, Refused, open_in_root
from vnet.tftp.transfer import NetasciiReader, Reader, ReadTransfer

MODES = ("octet", "netascii")


@dataclass
class Accepted:
    request: Request
    file: OpenFile
    transfer: ReadTransfer


def parse_read_request(datagram: bytes) -> Request:
    """The RRQ in ``datagram``; Refused for writes, unknown modes and malformed packets."""
    try:
        request = parse_request(datagram)
    except MalformedPacket as err:
        raise Refused(ErrorCode.ILLEGAL_OPERATION, str(err)) from err
    if request.opcode == Opcode.WRQ:
        raise Refused(ErrorCode.ACCESS_VIOLATION, "this server is read-only")
    if request.mode not in MODES:
        raise Refused(ErrorCode.ILLEGAL_OPERATION, f"transfer mode {request.mode!r} not supported")
    return request


def _reader(fd: int) -> Reader:
    # A buffered file object reads in large chunks and slices in C; closefd=False: the
    # transport owns the descriptor.
    return open(fd, "rb", buffering=256 * 1024, closefd=False).read


def accept(datagram: bytes, root: Path, limits: Limits) -> Accepted:
    """Parse, resolve and open; the transfer is ready for ``start``. Raises Refused."""
    request = parse_read_request(datagram)
    opened = open_in_root(root, request.filename)
    try:
        netascii = request.mode == "netascii"
        read = _reader(opened.fd)
        if netascii:
            read = NetasciiReader(read)
        granted = negotiate(request.options, None if netascii else opened.size, limits)
        oack = encode_oack(granted.oack) if granted.oack else None
        transfer = ReadTransfer(read, granted.settings, oack)
    except BaseException:
        os.close(opened.fd)
        raise
    return Accepted(request, opened, transfer)


__all__ = ["Accepted", "Refused", "accept", "parse_read_request"]
