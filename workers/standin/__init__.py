"""A stand-in board for CI: QEMU behind a simplerest PDU, UARTs on TCP, a labgrid exporter and coordinator."""
