"""Devices and boots: QEMU through labgrid, console and KTAP parsing."""
