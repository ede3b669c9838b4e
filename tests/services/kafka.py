"""A real single-node Apache Kafka broker (KRaft) for tests, without Docker.

Jars come from Maven Central (``tests/services/kafka/pom.xml``) into ``<repo>/.kafka-libs``;
the broker runs as ``java -cp '.kafka-libs/*' kafka.Kafka server.properties`` on 127.0.0.1.
See ``tests/services/README.md``.

CLI::

    python -m tests.services.kafka fetch    # jars into .kafka-libs (no-op when complete)
    python -m tests.services.kafka start    # prints the bootstrap address on stdout
    python -m tests.services.kafka status
    python -m tests.services.kafka stop

From Python (pytest fixtures)::

    broker = start_broker(tmp_path / "kafka")   # ready when it returns
    broker.stop(); broker.restart()             # same ports, same data dir
    broker = Broker.from_state(STATE_FILE)      # the broker started by tests/run.sh
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services._common import (
    REPO_ROOT,
    SERVICES_DIR,
    apt_install,
    log,
    read_state,
    run_coroutine,
    tcp_port_open,
    wait_until,
    write_state,
)

HOST = "127.0.0.1"
POM = Path(__file__).with_name("kafka") / "pom.xml"
LIBS_DIR = REPO_ROOT / ".kafka-libs"
LIBS_MARKER = LIBS_DIR / ".complete"
KAFKA_DIR = SERVICES_DIR / "kafka"
STATE_FILE = KAFKA_DIR / "state.json"
LAST_LOG = KAFKA_DIR / "last-broker.log"

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
MIN_JAVA = 17
# kafka-run-class.sh's flags, plus C1 only: on a loaded 2-core box it halves start-up
# (format ~3.7s -> ~1.5s, broker ~9s -> ~4.5s, measured); a test broker needs no C2 peak speed.
JVM_FLAGS = (
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
# Runs the broker in the background of a throw-away shell, so the broker outlives whoever
# started it (the CLI, or a pytest process) and is managed by pid / process group only.
_DETACH = '"$@" </dev/null >>"$0" 2>&1 & echo $!'

LOG4J2_PROPERTIES = """\
status = error
name = kafka-test
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped."""


# --------------------------------------------------------------------------- jars


def _pom_versions() -> dict[str, str]:
    """The <properties> of the pom (kafka.version, log4j2.version), namespace-agnostic."""
    root = ET.parse(POM).getroot()
    props = next(el for el in root if el.tag.rsplit("}", 1)[-1] == "properties")
    return {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in props}


def required_jars() -> list[str]:
    versions = _pom_versions()
    kafka, log4j = versions["kafka.version"], versions["log4j2.version"]
    return [
        f"kafka_2.13-{kafka}.jar",
        f"kafka-server-{kafka}.jar",
        f"kafka-clients-{kafka}.jar",
        f"log4j-core-{log4j}.jar",
        f"log4j-slf4j-impl-{log4j}.jar",
    ]


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def libs_complete() -> bool:
    if not LIBS_MARKER.is_file() or LIBS_MARKER.read_text().strip() != _pom_digest():
        return False
    return all((LIBS_DIR / jar).is_file() for jar in required_jars())


def _java_major() -> int:
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True).stderr
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def ensure_toolchain() -> None:
    """Java >= 17 and Maven; installs the Debian packages on a machine that lacks them."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        apt_install("openjdk-17-jdk-headless", "maven")
    if (major := _java_major()) < MIN_JAVA:
        raise BrokerError(f"Kafka 4.x needs Java >= {MIN_JAVA}, `java` is {major}")


def _verify_jars() -> None:
    jars = sorted(LIBS_DIR.glob("*.jar"))
    bad = [jar.name for jar in jars if not zipfile.is_zipfile(jar)]
    missing = [name for name in required_jars() if not (LIBS_DIR / name).is_file()]
    if bad or missing:
        raise BrokerError(f"bad jars {bad}, missing jars {missing} in {LIBS_DIR}")


def fetch_libs(force: bool = False) -> bool:
    """Copy the broker's runtime classpath into .kafka-libs; returns False if already there."""
    if libs_complete() and not force:
        return False
    ensure_toolchain()
    shutil.rmtree(LIBS_DIR, ignore_errors=True)
    cmd = [
        "mvn", "-B", "-q", "--no-transfer-progress", "-Dstyle.color=never",
        "-f", str(POM), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={LIBS_DIR}",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"mvn failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    _verify_jars()
    LIBS_MARKER.write_text(_pom_digest() + "\n")
    return True


# --------------------------------------------------------------------------- processes


def _proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child (a zombie otherwise keeps its /proc entry)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _pid_alive(pid: int) -> bool:
    _reap(pid)
    state = _proc_state(pid)
    return state is not None and state != "Z"


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for port 0, all held open together so they are distinct."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def new_cluster_id() -> str:
    """Kafka's Uuid format: 16 random bytes, URL-safe base64, unpadded, not starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------- broker


#: the one user of the secured listeners (SASL PLAIN and SCRAM; ``--add-scram`` at format)
SASL_USER, SASL_PASSWORD = "gw", "gw-secret-9f2"


@dataclass(frozen=True)
class SecuredPorts:
    """The broker's listeners beside PLAINTEXT, for the clients' security settings: SASL over
    plaintext and over TLS, TLS, and mutual TLS (a client certificate required)."""

    sasl: int
    sasl_ssl: int
    ssl: int
    mtls: int


def tls_files(workdir: Path) -> dict[str, Path]:
    tls = workdir / "tls"
    return {
        "ca": tls / "ca.pem",
        "keystore": tls / "broker-keystore.pem",
        "client_cert": tls / "client.pem",
        "client_key": tls / "client.key",
    }


def make_tls_files(workdir: Path) -> None:
    """A CA, the broker's certificate for 127.0.0.1 and a client's, signed by it (openssl)."""
    files = tls_files(workdir)
    tls = files["ca"].parent
    tls.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "3650", "-subj", "/CN=llm-gateway test CA")  # fmt: skip
    (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("broker", "/CN=127.0.0.1"), ("client", "/CN=llm-gateway test client")):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject
        )
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "3650", "-extfile", "san.cnf")  # fmt: skip
    files["keystore"].write_text((tls / "broker.key").read_text() + (tls / "broker.pem").read_text())


def _secured_settings(ports: SecuredPorts, workdir: Path) -> dict[str, str]:
    files = tls_files(workdir)
    plain = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}="{SASL_PASSWORD}";'
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    settings = {
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(files["keystore"]),
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.mtls.ssl.truststore.type": "PEM",
        "listener.name.mtls.ssl.truststore.location": str(files["ca"]),
    }
    for listener in ("sasl_plaintext", "sasl_ssl"):
        settings[f"listener.name.{listener}.plain.sasl.jaas.config"] = plain
        settings[f"listener.name.{listener}.scram-sha-256.sasl.jaas.config"] = scram
        settings[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] = scram
    return settings


def server_properties(
    port: int, controller_port: int, data_dir: Path, secured: SecuredPorts | None = None, workdir: Path | None = None
) -> str:
    listeners = f"PLAINTEXT://{HOST}:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if secured is not None:
        listeners += (
            f",SASL_PLAINTEXT://{HOST}:{secured.sasl},SASL_SSL://{HOST}:{secured.sasl_ssl}"
            f",SSL://{HOST}:{secured.ssl},MTLS://{HOST}:{secured.mtls}"
        )
        protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,MTLS:SSL"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"{listeners},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": listeners,
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": protocols,
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": "33554432",
    }
    if secured is not None and workdir is not None:
        settings.update(_secured_settings(secured, workdir))
    return "".join(f"{key}={value}\n" for key, value in settings.items())


async def _metadata_roundtrip(bootstrap: str, deadline: float) -> None:
    """Retry an admin DescribeCluster until it names a broker (or the monotonic ``deadline``
    passes), proving the Kafka protocol works, not just the socket."""
    from aiokafka.admin import AIOKafkaAdminClient

    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            if (await admin.describe_cluster()).get("brokers"):
                return
        except Exception as exc:  # any failure means "not ready yet"
            if time.monotonic() > deadline:
                raise BrokerError(f"no metadata from {bootstrap}: {exc!r}") from exc
        finally:
            await admin.close()
        await asyncio.sleep(0.5)


@dataclass
class Broker:
    """One broker process; ``pid``/``pgid`` are None while it is stopped."""

    workdir: Path
    port: int
    controller_port: int
    pid: int | None = None
    pgid: int | None = None
    state_file: Path | None = None
    secured: SecuredPorts | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.workdir / "log4j2.properties"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    # ----- state file

    def to_state(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pgid": self.pgid,
            "bootstrap": self.bootstrap,
            "port": self.port,
            "controller_port": self.controller_port,
            "workdir": str(self.workdir),
            "log": str(self.log_path),
            "secured": None if self.secured is None else vars(self.secured),
        }

    @classmethod
    def from_state(cls, state_file: Path = STATE_FILE) -> Broker:
        state = read_state(state_file)
        if state is None:
            raise BrokerError(f"no broker state at {state_file}")
        return cls(
            workdir=Path(state["workdir"]),
            port=int(state["port"]),
            controller_port=int(state["controller_port"]),
            pid=state["pid"],
            pgid=state["pgid"],
            state_file=state_file,
            secured=SecuredPorts(**state["secured"]) if state.get("secured") else None,
        )

    def _save_state(self) -> None:
        if self.state_file is not None:
            write_state(self.state_file, self.to_state())

    # ----- setup

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.secured is not None and not tls_files(self.workdir)["keystore"].is_file():
            make_tls_files(self.workdir)
        self.config_path.write_text(
            server_properties(self.port, self.controller_port, self.data_dir, self.secured, self.workdir)
        )
        self.log4j_path.write_text(LOG4J2_PROPERTIES)

    def _java(self, heap: str, main: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{heap}", *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            "-cp", f"{LIBS_DIR}/*", main, *args,
        ]  # fmt: skip

    def format_storage(self) -> None:
        if self.data_dir.exists():
            raise BrokerError(f"{self.data_dir} exists: a broker needs a fresh data dir")
        cmd = self._java(
            "256m", "kafka.tools.StorageTool", "format",
            f"--cluster-id={new_cluster_id()}", "-c", str(self.config_path),
            *(arg for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
              for arg in ("--add-scram", f"{mechanism}=[name={SASL_USER},password={SASL_PASSWORD}]")),
        )  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        with self.log_path.open("a") as out:
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BrokerError(f"storage format failed:\n{result.stdout}{result.stderr}")

    # ----- lifecycle

    def is_running(self) -> bool:
        """True if our broker process exists (checked by pid and its command line)."""
        if self.pid is None or not _pid_alive(self.pid):
            return False
        return str(self.config_path) in _proc_cmdline(self.pid)

    def launch(self) -> None:
        """Spawn the broker in its own session, without waiting for readiness."""
        if self.is_running():
            raise BrokerError(f"broker already running (pid {self.pid})")
        cmd = self._java("512m", "kafka.Kafka", str(self.config_path))
        launcher = subprocess.Popen(
            ["/bin/sh", "-c", _DETACH, str(self.log_path), *cmd],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        out, _ = launcher.communicate()
        self.pid, self.pgid = int(out.strip()), launcher.pid  # the launcher led the group
        self._save_state()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """TCP probe of the broker port (opened only once the broker is unfenced), then a
        Kafka metadata round-trip."""
        deadline = time.monotonic() + timeout
        while not tcp_port_open(HOST, self.port, timeout=0.5):
            if not self.is_running():
                raise BrokerError(f"broker exited during startup\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"broker port {self.port} not open\n{self.log_tail()}")
            time.sleep(0.2)
        deadline = max(deadline, time.monotonic() + 5.0)
        run_coroutine(lambda: _metadata_roundtrip(self.bootstrap, deadline))

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Launch on the existing config and data dir, and wait until ready."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, wait, then SIGKILL. Data dir and ports are kept."""
        if self.pid is not None and self.pgid is not None and self.is_running():
            pid = self.pid
            _kill_group(self.pgid, signal.SIGTERM)
            try:
                wait_until(lambda: not _pid_alive(pid), timeout, f"broker pid {pid} to exit")
            except TimeoutError:
                log(f"kafka: broker pid {pid} ignored SIGTERM for {timeout:.0f}s, killing it")
                _kill_group(self.pgid, signal.SIGKILL)
                wait_until(lambda: not _pid_alive(pid), 10, f"broker pid {pid} to die")
        self.pid = self.pgid = None
        self._save_state()

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        self.start(timeout)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])


def start_broker(workdir: Path, state_file: Path | None = None) -> Broker:
    """Format a fresh data dir under ``workdir`` and start a ready broker on free ports."""
    if not libs_complete():
        raise BrokerError("Kafka jars missing: run `python -m tests.services.kafka fetch`")
    port, controller_port, *secured = free_ports(6)
    broker = Broker(workdir, port, controller_port, state_file=state_file, secured=SecuredPorts(*secured))
    broker.write_config()
    broker.format_storage()
    broker.start()
    return broker


# --------------------------------------------------------------------------- CLI


def _timed(label: str, started: float) -> None:
    log(f"kafka: {label} in {time.monotonic() - started:.1f}s")


def cmd_fetch(args: argparse.Namespace) -> int:
    started = time.monotonic()
    fetched = fetch_libs(force=args.force)
    _timed("jars fetched" if fetched else "jars already complete", started)
    return 0


def _stop_recorded() -> None:
    """Stop the broker recorded in state.json (if any), keep its log, remove its dir."""
    if read_state(STATE_FILE) is None:
        return
    broker = Broker.from_state(STATE_FILE)
    broker.stop()
    if broker.log_path.is_file():
        shutil.copyfile(broker.log_path, LAST_LOG)
    shutil.rmtree(broker.workdir, ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)


def cmd_start(_: argparse.Namespace) -> int:
    started = time.monotonic()
    fetch_libs()
    if read_state(STATE_FILE) is not None:
        log("kafka: stopping the broker left by an earlier run")
        _stop_recorded()
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    workdir = KAFKA_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    broker = start_broker(workdir, state_file=STATE_FILE)
    _timed(f"broker ready at {broker.bootstrap} (pid {broker.pid})", started)
    print(broker.bootstrap)
    return 0


def cmd_stop(_: argparse.Namespace) -> int:
    started = time.monotonic()
    if read_state(STATE_FILE) is None:
        log("kafka: no broker recorded, nothing to stop")
        return 0
    _stop_recorded()
    _timed(f"broker stopped (log kept at {LAST_LOG.relative_to(REPO_ROOT)})", started)
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    if read_state(STATE_FILE) is None:
        print("kafka: not started")
        return 1
    broker = Broker.from_state(STATE_FILE)
    running = broker.is_running()
    ready = running and tcp_port_open(HOST, broker.port)
    print(f"kafka: {'ready' if ready else 'running' if running else 'stopped'} "
          f"bootstrap={broker.bootstrap} pid={broker.pid} log={broker.log_path}")  # fmt: skip
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.services.kafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="copy the broker jars into .kafka-libs")
    fetch.add_argument("--force", action="store_true", help="fetch even if complete")
    fetch.set_defaults(func=cmd_fetch)
    sub.add_parser("start", help="start a fresh broker, print its bootstrap").set_defaults(func=cmd_start)
    sub.add_parser("stop", help="stop the recorded broker").set_defaults(func=cmd_stop)
    sub.add_parser("status", help="show the recorded broker").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (BrokerError, subprocess.CalledProcessError, TimeoutError) as exc:
        log(f"kafka: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
