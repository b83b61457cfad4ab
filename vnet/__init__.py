"""vnet: a virtual networking controller for KVM/QEMU hosts."""

__version__ = "0.1.0"
