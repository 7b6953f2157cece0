"""A build's identity: the image id and the partition labels derived from it.

live-boot, GRUB and the device tools find this image's partitions by these labels,
so a second AmberPi medium (another build) is never taken for this one.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageIdentity:
    image_id: str

    @property
    def system_label(self) -> str:
        """ISO9660 volume id of p2 (d-characters only)."""
        return f"AMBERPI_SYS_{self.image_id.upper()}"

    @property
    def kernel_label(self) -> str:
        return f"AMBERPI_KRN_{self.image_id.upper()}"

    @property
    def persistence_label(self) -> str:
        """ext4 label of p4 (16 characters at most)."""
        return f"amberpi-{self.image_id}"

    def labels(self) -> dict[str, str]:
        return {"system": self.system_label, "kernel": self.kernel_label, "persistence": self.persistence_label}

    def partition_uuid(self, role: str) -> str:
        """A stable UUID per image and partition role."""
        return str(uuid.UUID(hashlib.sha256(f"amberpi:{self.image_id}:{role}".encode()).hexdigest()[:32]))
