"""The packed checkpoint format (one owner): layout dataclass, pack/unpack, read/write, version."""
