"""A real Redis Sentinel deployment on loopback: one master, one replica, three sentinels.

Every process is a ``redis-server`` (``--sentinel`` for the sentinels) started
here and stopped by its PID; each has its own temporary directory (sentinels
rewrite their config file).  ``switchover()`` performs a planned failover that
loses no acknowledged write (see its docstring).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from examples.devserver import free_port, terminate
from tests.testsupport.redis_server import find_redis_server
from tests.testsupport.workers import wait_for

MASTER_NAME = "mymaster"


class SentinelCluster:
    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="asyncjobs-sentinel-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.data_ports: list[int] = []
        self.sentinel_ports: list[int] = []

    # ------------------------------------------------------------------ start/stop
    def _spawn(self, args: list[str], name: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        self.procs.append(proc)

    def _server(self, port: int, *extra: str) -> None:
        workdir = self.dir / f"redis-{port}"
        workdir.mkdir()
        self._spawn(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "no", "--loglevel", "notice", *extra],
            f"redis-{port}",
        )
        wait_for(lambda: self._ping(port), 15, message=f"redis-server on {port}")

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=0.5) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def start(self) -> SentinelCluster:
        master, replica = free_port(), free_port()
        self.data_ports = [master, replica]
        self._server(master)
        self._server(replica, "--replicaof", "127.0.0.1", str(master))
        wait_for(lambda: self.info(replica).get("master_link_status") == "up", 20,
                 message="replica in sync with the master")
        for _ in range(3):
            port = free_port()
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 5000\n"
                f"sentinel failover-timeout {MASTER_NAME} 20000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._spawn([self.binary, str(conf), "--sentinel"], f"sentinel-{port}")
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:
            wait_for(lambda p=port: self._sentinel_sees_all(p), 30, message=f"sentinel {port} sees the deployment")
        return self

    def _sentinel_sees_all(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as c:
                m = c.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        except redis.RedisError:
            return False
        fields = dict(zip(m[0::2], m[1::2], strict=False)) if isinstance(m, list) else m
        return int(fields.get("num-slaves", 0)) >= 1 and int(fields.get("num-other-sentinels", 0)) >= 2

    def close(self) -> None:
        for proc in reversed(self.procs):
            terminate(proc)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.sentinel_ports]

    @property
    def sentinel_arg(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def info(self, port: int, section: str = "replication") -> dict[str, str]:
        with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as c:
            return {k: str(v) for k, v in c.info(section).items()}

    def master_port(self) -> int:
        """The master's port as every sentinel reports it (fails if they disagree)."""
        ports = set()
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as c:
                _host, p = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                ports.add(int(p))
        assert len(ports) == 1, f"sentinels disagree on the master: {ports}"
        return ports.pop()

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port)

    # ------------------------------------------------------------------ failover
    def switchover(self, timeout: float = 60.0) -> tuple[int, int]:
        """Planned failover that loses no acknowledged write; returns (old, new) master ports.

        Sentinel promotes the replica, but the old master keeps accepting writes from
        clients still connected to it until Sentinel turns it into a replica (seconds
        later); those writes are then discarded (asynchronous replication: Redis'
        documented behaviour, no client can prevent it). So, as a careful operator
        does for a planned switchover: pause writes on the master (CLIENT PAUSE WRITE),
        wait until the replica has everything, SENTINEL FAILOVER, wait until every
        sentinel names the new master, then do to the old master what Sentinel itself
        would (REPLICAOF the new master, CLIENT KILL TYPE normal) and unpause it: the
        paused writes are never executed there, their clients reconnect through
        Sentinel to the new master and retry.
        """
        old = self.master_port()
        new = next(p for p in self.data_ports if p != old)
        with self.client(old) as m:
            m.execute_command("CLIENT", "PAUSE", str(int(timeout * 1000)), "WRITE")
            try:
                target = int(self.info(old)["master_repl_offset"])
                wait_for(lambda: int(self.info(new).get("slave_repl_offset", -1)) >= target, 20,
                         message="replica caught up with the paused master")
                with redis.Redis(port=self.sentinel_ports[0], socket_timeout=5) as s:
                    s.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
                wait_for(lambda: self._all_report(new), timeout, interval=0.1,
                         message=f"every sentinel names 127.0.0.1:{new} as the master")
                m.execute_command("REPLICAOF", "127.0.0.1", str(new))
                m.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            finally:
                m.execute_command("CLIENT", "UNPAUSE")
        wait_for(lambda: self.info(old).get("master_link_status") == "up", 30,
                 message="the old master replicates from the new one")
        return old, new

    def _all_report(self, port: int) -> bool:
        try:
            return self.master_port() == port
        except (AssertionError, redis.RedisError):
            return False
