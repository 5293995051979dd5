"""Sub-commands of the `saddlejax` CLI (see `saddlejax._cli`)."""
