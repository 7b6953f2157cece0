"""AmberPi: indestructible Raspberry Pi images built from Debian's archive."""

__version__ = "0.1.0"
