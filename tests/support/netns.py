"""A host of a test's own, on one machine: a network namespace joined to this one by a
veth pair, whose link the test can cut the way a vanished host goes (no FIN, no RST:
its packets simply stop).

Needs root and iproute2 (`ip`); `available()` says whether this machine has both.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess

# The README's bound on a takeover after the leader's host vanished: the server's
# keepalive probes after 2 s of silence, three 1 s apart (or 5 s of unacknowledged data),
# then the standby's next try for the lock, every 0.5 s.
TAKEOVER_BOUND_S = 10.0


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _unused_subnet() -> int:
    """A 10.213.<n>.0/30 no interface on this host has: two test runs at once (the suite
    beside another checkout's) must not route each other's namespaces."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr"], check=True, capture_output=True, text=True
    ).stdout
    taken = {int(n) for n in re.findall(r"inet 10\.213\.(\d+)\.", shown)}
    free = [n for n in range(256) if n not in taken]
    assert free, "every 10.213.<n>.0/30 is in use"
    return random.choice(free)


class IsolatedHost:
    """Namespace `mb<n>`; this side of the link is `host_address`, the other `address`."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10_000}{random.randrange(100)}"
        self.namespace = f"mb{tag}"
        self._outside = f"mbh{tag}"  # interface names: at most 15 characters
        self._inside = f"mbn{tag}"
        subnet = _unused_subnet()
        self.host_address = f"10.213.{subnet}.1"
        self.address = f"10.213.{subnet}.2"
        self.network = f"10.213.{subnet}.0/30"

    def create(self) -> None:
        _ip("netns", "add", self.namespace)
        _ip("link", "add", self._outside, "type", "veth", "peer", "name", self._inside)
        _ip("link", "set", self._inside, "netns", self.namespace)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self._outside)
        _ip("link", "set", self._outside, "up")
        self._inside_ip("addr", "add", f"{self.address}/30", "dev", self._inside)
        self._inside_ip("link", "set", self._inside, "up")
        self._inside_ip("link", "set", "lo", "up")

    @property
    def wrapper(self) -> tuple[str, ...]:
        """Prefix a command with this to run it on the isolated host."""
        return ("ip", "netns", "exec", self.namespace)

    def cut(self) -> None:
        """The host vanishes: its side of the link goes down, and nothing more is sent."""
        self._inside_ip("link", "set", self._inside, "down")

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self._outside], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], check=False, capture_output=True)

    def _inside_ip(self, *args: str) -> None:
        _ip("netns", "exec", self.namespace, "ip", *args)
