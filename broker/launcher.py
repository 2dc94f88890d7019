"""Run the generated broker config on this machine: tests, the demo and ``ftte broker run``.

The local config comes from the same generator as the field config; only the listener, the
paths (the folder ``ftte broker init`` wrote, a persistence folder inside it) and the run-as
user (whoever runs it, who owns the generated files) differ.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from broker.fleet import Fleet, SiteEntry
from broker.generate import (
    SHIPPED_PERSISTENCE,
    Persistence,
    QueueLimits,
    mosquitto_conf,
    site_conf,
)
from ftte.config import read_toml

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> Path:
    """The mosquitto binary, or a clear error saying how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in MOSQUITTO_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError(
        "mosquitto is not installed; on Debian: apt-get install mosquitto (or run `make demo`, "
        "which installs it)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningBroker:
    """A mosquitto process serving a generated config on 127.0.0.1."""

    config_dir: Path
    port: int
    conf_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients verify the broker against."""
        return self.config_dir / "certs" / "ca.crt"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and wait until its TLS listener completes a handshake."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(find_mosquitto()), "-c", str(self.conf_path)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.process.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text()[-2000:]
                )
            if _tls_ready(self.port, self.ca_file):
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"mosquitto did not accept TLS on port {self.port} in {timeout_s} s")

    def stop(self) -> None:
        """Terminate the broker (it saves its persistence file on the way out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence."""
        self.stop()
        self.start()

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tls_ready(port: int, ca_file: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except OSError:
        return False


def start_dev_broker(
    fleet: Fleet,
    config_dir: Path,
    port: int | None = None,
    *,
    queue: QueueLimits | None = None,
    persistence: Persistence = SHIPPED_PERSISTENCE,
) -> RunningBroker:
    """Start mosquitto on 127.0.0.1 with ``config_dir``'s generated files (from init_broker);
    ``queue`` and ``persistence`` replace the generated ones (tests and benchmarks)."""
    port = port or free_port()
    conf_path = write_local_conf(
        fleet, config_dir, port, "127.0.0.1", queue=queue, persistence=persistence
    )
    broker = RunningBroker(config_dir, port, conf_path, config_dir / "mosquitto.log")
    broker.start()
    return broker


def write_local_conf(
    fleet: Fleet,
    config_dir: Path,
    port: int,
    bind_address: str,
    *,
    queue: QueueLimits | None = None,
    persistence: Persistence = SHIPPED_PERSISTENCE,
) -> Path:
    """``config_dir/mosquitto.local.conf``: the generated config with paths inside
    ``config_dir``, run as the current user; returns its path."""

    def render(persistence_dir: Path) -> str:
        return mosquitto_conf(
            fleet,
            config_dir.resolve(),
            port=port,
            bind_address=bind_address,
            persistence_dir=persistence_dir,
            run_as=getpass.getuser(),
            queue=queue,
            persistence=persistence,
        )

    return _write_local(config_dir, render)


def _write_local(config_dir: Path, render: Callable[[Path], str]) -> Path:
    """``render(persistence folder)`` as ``config_dir/mosquitto.local.conf`` (private: a
    site's holds its bridge's password); the persistence folder is ``config_dir/local-data``."""
    data = config_dir / "local-data"
    data.mkdir(exist_ok=True)
    conf_path = config_dir / "mosquitto.local.conf"
    conf_path.write_text(render(data.resolve()))
    conf_path.chmod(0o600)
    return conf_path


def start_site_broker(
    fleet: Fleet, site: SiteEntry, site_dir: Path, central_port: int, port: int | None = None
) -> RunningBroker:
    """Start a site gateway's Mosquitto on 127.0.0.1 with its generated files (``site_dir``
    from init_broker), bridged to the central broker on 127.0.0.1:``central_port``."""
    port = port or free_port()
    password = str(read_toml(site_dir / "bridge.toml")["broker"]["password"])

    def render(persistence_dir: Path) -> str:
        return site_conf(
            fleet,
            site,
            site_dir.resolve(),
            port=port,
            bind_address="127.0.0.1",
            persistence_dir=persistence_dir,
            run_as=getpass.getuser(),
            central=("127.0.0.1", central_port),
            password=password,
        )

    conf_path = _write_local(site_dir, render)
    broker = RunningBroker(site_dir, port, conf_path, site_dir / "mosquitto.log")
    broker.start()
    return broker
