"""Everything that loads or runs an artifact (the host LiteRT, the aarch64 LiteRT under qemu-user, ...)."""
