"""The TFTP server's core: wire codec, option negotiation, safe path resolution and the
transfer state machine. No sockets here; ``vnet.serve.tftp`` is the transport around it.

    packet.py    RFC 1350/2347 datagrams <-> dataclasses
    options.py   blksize, timeout, tsize, windowsize negotiation (pure)
    paths.py     file names -> an open file strictly inside the root
    transfer.py  one read transfer: lock-step or windowed, retransmission, block rollover
    session.py   one request datagram -> a ready transfer or the ERROR packet to send
"""
