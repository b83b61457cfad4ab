"""DHCPv4: wire codec, options, the pure server core. No sockets here (see vnet.serve.dhcp)."""
