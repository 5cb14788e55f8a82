"""A private, real Redis Cluster on loopback: three masters and a replica each, started and stopped by PID.

``RedisCluster(masters=3, replicas=1)`` starts ``redis-server --cluster-enabled yes`` on free ports
(each also needs its bus port, port + 10000), joins them with ``redis-cli --cluster create`` and
waits until every node reports ``cluster_state:ok``.  Helpers find the node owning a key's slot,
its replica, and run a manual failover (``CLUSTER FAILOVER`` on the replica, which waits for the
replica to have every write of its master: nothing acknowledged is lost).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from examples.devserver import terminate
from tests.testsupport.redis_server import find_redis_server


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_ports(n: int) -> list[int]:
    """``n`` ports whose cluster-bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 45000)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


class RedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.binary = find_redis_server()
        cli = shutil.which("redis-cli") or str(Path(self.binary).with_name("redis-cli"))
        self.cli = cli
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = _free_cluster_ports(masters * (1 + replicas))
        self.dir = tempfile.mkdtemp(prefix="asyncjobs-cluster-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> None:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait_pong(port, timeout)
        out = subprocess.run(
            [self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if out.returncode != 0:
            self.close()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        self.wait_ok(timeout)

    def _start_node(self, port: int) -> None:
        node_dir = Path(self.dir) / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--save", "", "--appendonly", "no", "--dir", str(node_dir), "--protected-mode", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def _wait_pong(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client(port).ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node on {port} did not start")
            time.sleep(0.05)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every running node reports ``cluster_state:ok`` and agrees on who owns every slot."""
        deadline = time.monotonic() + timeout
        while True:
            views = []
            try:
                for port in self.running_ports():
                    info = self.client(port).execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        raise RuntimeError(text)
                    views.append(self._slot_masters(port))
                if views and all(v == views[0] for v in views) and self._replicated(self.running_ports()[0]):
                    return
            except (redis.RedisError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def running_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def close(self) -> None:
        for proc in self.procs.values():
            terminate(proc)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------- topology
    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2)

    def _replicated(self, port: int) -> bool:
        """Every slot range lists its replicas (they attach a moment after the cluster forms)."""
        reply = self.client(port).execute_command("CLUSTER", "SLOTS")
        live = set(self.running_ports())
        return all(sum(1 for n in nodes[1:] if int(n[1]) in live) >= min(self.replicas, len(live) - self.masters)
                   for _s, _e, *nodes in reply)

    def _slot_masters(self, port: int) -> list[tuple[int, int, int]]:
        reply = self.client(port).execute_command("CLUSTER", "SLOTS")
        return sorted((int(s), int(e), int(nodes[0][1])) for s, e, *nodes in reply)

    def owner_of(self, key: str) -> int:
        """Port of the master that owns ``key``'s slot (asked from a running node)."""
        slot = key_slot(key.encode())
        port = self.running_ports()[0]
        for start, end, *nodes in self.client(port).execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(nodes[0][1])
        raise RuntimeError(f"no node owns slot {slot}")

    def replica_of(self, master_port: int) -> int:
        for _start, _end, *nodes in self.client(master_port).execute_command("CLUSTER", "SLOTS"):
            if int(nodes[0][1]) == master_port and len(nodes) > 1:
                return int(nodes[1][1])
        raise RuntimeError(f"no replica of {master_port}")

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or self.ports[0]}"

    def failover(self, key: str, timeout: float = 30.0) -> tuple[int, int]:
        """Promote the replica of ``key``'s master (``CLUSTER FAILOVER``); returns (old, new) ports."""
        old = self.owner_of(key)
        new = self.replica_of(old)
        self.client(new).execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        while self.owner_of(key) != new:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica {new} of {old} did not take over")
            time.sleep(0.05)
        self.wait_ok(timeout)
        return old, new
