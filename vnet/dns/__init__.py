"""The DNS core: zone data, the answer function, caches and forwarding decisions.

Pure code over dnslib's wire types: no sockets, threads or clocks inside (time is passed in).
``vnet.serve.dns`` is the transport that feeds datagrams to :func:`vnet.dns.answer.handle`.

    zone.py      network model + leases -> Zone (authoritative data, built once per change)
    answer.py    query bytes + Zone -> reply bytes, or "forward this"; never raises
    cache.py     ready reply bytes keyed by the query's wire form (the fast path)
    forward.py   forwarder selection, retry order, and a TTL-honouring answer cache
"""
