"""Boot an image in qemu-system-aarch64 (-M virt, AAVMF UEFI) and drive its serial console.

Used by the end-to-end tests (tests/boot). TCG emulation is slow:
allow minutes, not seconds, for a boot.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from amberpi.errors import AmberPiError, ToolMissing

AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
LOGIN_PROMPT = r"login: "
SHELL_PROMPT = "AMBERPI-PROMPT# "
RC_MARKER = re.compile(r"__AMBERPI_RC=(\d+)__")
# Terminal control sequences (bracketed paste, cursor moves) that shells print.
ANSI_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>])")


class VMError(AmberPiError):
    """The guest did not do what was expected within the time allowed."""


@dataclass
class VM:
    image: Path
    memory_mib: int = 2048
    cpus: int = 2
    console_log: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    # "virt,acpi=off": the firmware hands the kernel QEMU's device tree, with its PL061 GPIO
    # controller and the gpio-keys power button on line 3 (ACPI describes neither).
    machine: str = "virt"
    # An i6300esb watchdog on PCI, which systemd can feed (resilience.watchdog_seconds).
    watchdog: bool = False
    # QEMU user networking port forwards, e.g. "tcp:127.0.0.1:2222-:22" (host port to guest port).
    hostfwd: list[str] = field(default_factory=list)
    # More disks after the image (vdb, vdc... in the guest), e.g. a byte copy of it. Disk n of
    # [image, *extra_disks] has the serial "diskN" (/dev/disk/by-id/virtio-diskN).
    extra_disks: list[Path] = field(default_factory=list)
    # The disk the firmware boots, by that index (QEMU's bootindex).
    boot_disk: int = 0
    child: pexpect.spawn | None = None  # type: ignore[type-arg]

    def argv(self, vars_file: Path) -> list[str]:
        return [
            "-M",
            self.machine,
            "-cpu",
            "cortex-a72",
            "-m",
            str(self.memory_mib),
            "-smp",
            str(self.cpus),
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_file}",
            *self.disk_args(),
            "-netdev",
            ",".join(["user,id=net0", *(f"hostfwd={rule}" for rule in self.hostfwd)]),
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            f"unix:{self.monitor_socket},server,nowait",
            *(["-device", "i6300esb"] if self.watchdog else []),
            *self.extra_args,
        ]

    def disk_args(self) -> list[str]:
        args = []
        for index, disk in enumerate([self.image, *self.extra_disks]):
            # Each behind a PCIe root port of its own (the root bus of -M virt cannot hot-unplug,
            # device_del); rp0 for the image, slots from 10 for the others (callers add rp1 on slot 2).
            port, slot = ("rp0", 1) if index == 0 else (f"rpdisk{index}", 10 + index)
            boot = ",bootindex=0" if index == self.boot_disk else ""
            args += [
                "-drive",
                f"if=none,id=disk{index},format=raw,file={disk}",
                "-device",
                f"pcie-root-port,id={port},chassis={slot},slot={slot}",
                "-device",
                f"virtio-blk-pci,drive=disk{index},id=vdisk{index},bus={port},serial=disk{index}{boot}",
            ]
        return args

    @property
    def monitor_socket(self) -> Path:
        return self._tmp / "monitor.sock"

    def monitor(self, command: str, timeout: float = 30) -> str:
        """Run a QEMU monitor command (device_del, system_powerdown...); returns what it printed."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(self.monitor_socket))
            received = b""
            while not received.endswith(b"(qemu) "):
                received += connection.recv(4096)
            connection.sendall(command.encode() + b"\n")
            received = b""
            while not received.endswith(b"(qemu) "):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                received += chunk
        return ANSI_ESCAPE.sub("", received.decode(errors="replace")).replace("\r", "")

    def start(self) -> None:
        qemu = shutil.which("qemu-system-aarch64")
        if qemu is None:
            raise ToolMissing("qemu-system-aarch64", "qemu-system-arm")
        if not AAVMF_CODE.exists():
            raise ToolMissing(str(AAVMF_CODE), "qemu-efi-aarch64")
        self._tmp = Path(tempfile.mkdtemp(prefix="amberpi-vm-"))  # short: a socket path has a length limit
        vars_file = self._tmp / "AAVMF_VARS.fd"
        shutil.copyfile(AAVMF_VARS, vars_file)
        log = (self.console_log or self._tmp / "console.log").open("ab")
        self.child = pexpect.spawn(qemu, self.argv(vars_file), timeout=60, maxread=65536, logfile=log)

    def expect(self, pattern: str | list[str], timeout: float) -> int:
        assert self.child
        try:
            return int(self.child.expect(pattern, timeout=timeout))
        except pexpect.TIMEOUT:
            tail = (self.child.before or b"")[-2000:].decode(errors="replace")
            raise VMError(f"timed out after {timeout:.0f}s waiting for {pattern!r}", where=f"console tail:\n{tail}") from None
        except pexpect.EOF:
            tail = (self.child.before or b"")[-2000:].decode(errors="replace")
            raise VMError(f"QEMU exited while waiting for {pattern!r}", where=f"console tail:\n{tail}") from None

    def wait_for_login(self, timeout: float = 900) -> float:
        """Seconds until the login prompt appears."""
        started = time.monotonic()
        self.expect(LOGIN_PROMPT, timeout)
        return time.monotonic() - started

    def login(self, user: str, password: str, timeout: float = 120) -> None:
        assert self.child
        self.child.sendline(user)
        self.expect("Password:", timeout)
        self.child.sendline(password)
        # A prompt we set ourselves is unambiguous; kernel messages go quiet.
        self.expect([r"# ", r"\$ "], timeout)
        # Split in the command so its echo never matches the prompt itself.
        head, tail = SHELL_PROMPT[:4], SHELL_PROMPT[4:]
        self.child.sendline(f"export PS1='{head}''{tail}'; stty -echo; dmesg -n 1")
        self.expect(SHELL_PROMPT, timeout)

    def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run a shell command in the guest; returns (exit status, output)."""
        assert self.child
        self.child.sendline(f"{command}; echo __AMBERPI_RC=$?__")
        self.expect(RC_MARKER.pattern, timeout)
        output = (self.child.before or b"").decode(errors="replace")
        code = int(self.child.match.group(1))
        self.expect(SHELL_PROMPT, timeout)
        return code, ANSI_ESCAPE.sub("", output).replace("\r", "").strip()

    def check(self, command: str, timeout: float = 120) -> str:
        code, output = self.run(command, timeout)
        if code != 0:
            raise VMError(f"guest command failed ({code}): {command}", where=output[-2000:])
        return output

    def send(self, line: str) -> None:
        assert self.child
        self.child.sendline(line)

    def wait_exit(self, timeout: float = 300) -> None:
        assert self.child
        self.expect(pexpect.EOF, timeout)  # type: ignore[arg-type]
        self.child.close()

    def kill(self) -> None:
        """Pull the plug: SIGKILL QEMU, no shutdown of the guest."""
        if self.child and self.child.isalive():
            self.child.kill(9)
            self.child.close(force=True)

    def close(self) -> None:
        self.kill()
        if hasattr(self, "_tmp"):
            shutil.rmtree(self._tmp, ignore_errors=True)


@dataclass
class RaspiVM(VM):
    """A Raspberry Pi 3 B as QEMU models it (-M raspi3b): no VideoCore firmware, so U-Boot
    and the device tree come from the image's p1 as -kernel and -dtb; the card is an SD
    card (its size a power of two); the login is on the mini-UART, QEMU's second serial."""

    uboot: Path = Path()
    device_tree: Path = Path()
    machine: str = "raspi3b"
    memory_mib: int = 1024

    def argv(self, vars_file: Path) -> list[str]:
        return [
            "-M",
            self.machine,
            "-m",
            str(self.memory_mib),
            "-kernel",
            str(self.uboot),
            "-dtb",
            str(self.device_tree),
            "-drive",
            f"if=sd,format=raw,file={self.image}",
            "-display",
            "none",
            "-serial",
            "null",
            "-serial",
            "stdio",
            "-monitor",
            f"unix:{self.monitor_socket},server,nowait",
            *self.extra_args,
        ]


# Keys on GRUB's console. Emacs-style control keys, not VT100 arrows: through the
# firmware's serial terminal an arrow's escape sequence can arrive cut, and GRUB's
# editor then types "[B" into the entry.
KEY_DOWN = "\x0e"  # Ctrl-N: the next menu entry, or the next line in the editor
CTRL_E = "\x05"
CTRL_X = "\x18"
GRUB_MENU = "will be executed automatically"


def grub_append_to_cmdline(vm: VM, text: str, timeout: float = 300) -> None:
    """Edit the default entry at GRUB's menu: append `text` to its `linux` line, then boot it."""
    assert vm.child
    vm.expect(GRUB_MENU, timeout)
    vm.child.send("e")
    vm.expect("initrd", 30)
    # Under emulation GRUB draws the editor slowly, and a key sent while it does is lost.
    time.sleep(3)
    # The entry's lines as GRUB's editor shows them: its own `setparams`, an empty
    # line, our `echo`, then `linux`.
    for _ in range(3):
        vm.child.send(KEY_DOWN)
        time.sleep(1)
    vm.child.send(CTRL_E)
    time.sleep(1)
    vm.child.send(" " + text)
    time.sleep(1)
    vm.child.send(CTRL_X)


def grub_press(vm: VM, key: str, timeout: float = 300) -> None:
    """Press a key while GRUB's menu counts down (a menu entry's --hotkey boots it)."""
    assert vm.child
    vm.expect(GRUB_MENU, timeout)
    time.sleep(0.5)
    vm.child.send(key)
