"""Every kernel side effect of vnet (netlink, TAP ioctls, capability probes, nftables), nothing else."""
