"""Start a real ``tritonserver`` on a model repository, wait until it is ready, stop it cleanly.

The binary is the ``tritonserver`` on PATH, else the one the ``nvidia-pytriton`` wheel bundles
(Python backend only). For the bundled one this module assembles what the Python backend needs
(PITFALLS.md "Triton"): a backend directory holding ``libtriton_python.so`` plus the stub built
for THIS Python version, ``LD_LIBRARY_PATH`` with this interpreter's libpython and the wheel's
libraries, and ``PATH`` led by this interpreter's directory (the stub finds ``python3`` there,
so its ``sys.prefix`` and site-packages are this environment's).

The server runs in its own process group (so a terminal's Ctrl-C reaches only us, and we stop
it and its stub processes together) and gets SIGTERM if this process dies (Linux).

>>> with TritonServer(find_tritonserver(), "repo", Ports(8000, 8001, 8002)) as srv:  # doctest: +SKIP
...     srv.wait_ready(120); srv.wait()
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ServeError

LOG_TAIL = 2000  # characters of the server log quoted in an error


@dataclass(frozen=True)
class ServerBinary:
    path: Path
    bundled: bool  # the nvidia-pytriton wheel's copy: we assemble its backend directory
    dist: Path | None = None  # pytriton/tritonserver of the wheel
    libs: Path | None = None  # nvidia_pytriton.libs (libcudart, libtritonserver, ...)


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def named(self) -> dict[str, int]:
        return {"HTTP": self.http, "gRPC": self.grpc, "metrics": self.metrics}


def check_ports(host: str, ports: Ports) -> None:
    """Before a server starts: each port is a distinct 1..65535 (ConfigError, exit 2) that nothing holds on
    ``host`` (ServeError naming the port, exit 11). Another process on the HTTP port would otherwise answer
    our readiness probe while our own server dies on the bind.

    ``check_ports("127.0.0.1", Ports(8000, 8001, 8002))`` returns None when all three are free.
    """
    named = ports.named()
    if len(set(named.values())) != 3 or not all(0 < p < 65536 for p in named.values()):
        raise ConfigError(f"--http-port, --grpc-port and --metrics-port must be three different ports in 1..65535 "
                          f"(got {ports.http}, {ports.grpc}, {ports.metrics})")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind, port in named.items():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds: TIME_WAIT is no owner
            try:
                s.bind((host, port))
            except OSError as e:
                why = "in use by another process" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
                raise ServeError(f"{kind} port {port} on {host or '*'}: {why}; stop that process or choose "
                                 f"another --{kind.lower()}-port") from None


def listening_ports(pid: int) -> set[int] | None:
    """TCP ports process ``pid`` listens on (Linux ``/proc``); None where that cannot be read.

    How ``coder serve`` confirms that the server answering on its HTTP port is the one it started.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def find_tritonserver() -> ServerBinary:
    """``tritonserver`` on PATH, else nvidia-pytriton's bundled binary; ServeError naming the fix."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerBinary(Path(on_path), bundled=False)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError("no tritonserver on PATH and nvidia-pytriton is not installed: pip install 'coder[triton]'")
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServeError(f"nvidia-pytriton has no server binary at {binary} (an incomplete install?)")
    return ServerBinary(binary, True, dist, dist.parent.parent / "nvidia_pytriton.libs")


def libpython_dir() -> Path:
    """Directory of this interpreter's shared libpython (the Python backend stub links it)."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not Path(libdir, name).exists():
        raise ServeError(f"{sys.executable} has no shared libpython ({name or 'none'}); the Triton Python backend "
                         "stub needs one (rebuild Python with --enable-shared, e.g. PYTHON_CONFIGURE_OPTS)")
    return Path(libdir)


def prepare_backends(binary: ServerBinary, workdir: Path) -> Path | None:
    """For the bundled server: ``workdir/backends/python`` with the stub for this Python version."""
    if not binary.bundled:
        return None
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = binary.dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (binary.dist / "python_backend_stubs").glob("*"))
        raise ServeError(f"nvidia-pytriton has no Python backend stub for Python {version} (has {', '.join(have)})")
    target = workdir / "backends" / "python"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(binary.dist / "backends" / "python", target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return workdir / "backends"


def server_env(binary: ServerBinary) -> dict[str, str]:
    """The environment the server and its Python stubs need, whatever the user's shell holds."""
    env = dict(os.environ)
    libs = [str(libpython_dir())] + ([str(binary.libs)] if binary.libs and binary.libs.is_dir() else [])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    env.pop("PYTHONHOME", None)  # another interpreter's home would shadow this one's
    return env


def server_command(binary: ServerBinary, repo: Path, backends: Path | None, host: str, ports: Ports) -> list[str]:
    cmd = [str(binary.path), "--model-repository", str(repo),
           "--http-address", host, "--grpc-address", host, "--metrics-address", host,
           "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
           "--exit-timeout-secs", "10", "--strict-readiness", "true"]
    if backends is not None:
        cmd += ["--backend-directory", str(backends)]
        # Without the wheel's cache libraries the default cache directory does not exist.
        cmd += ["--cache-directory", str(binary.dist / "caches")]
    return cmd


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG), so a
    killed ``coder serve`` leaves no server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class TritonServer:
    """One tritonserver process (own process group). Use as a context manager: stop() on exit."""

    def __init__(self, binary: ServerBinary, repo: str | os.PathLike, ports: Ports = Ports(),
                 host: str = "127.0.0.1", workdir: str | os.PathLike | None = None,
                 log_file: str | os.PathLike | None = None):
        self.binary, self.repo, self.ports, self.host = binary, Path(repo).resolve(), ports, host
        self.workdir = Path(workdir) if workdir else self.repo.parent
        self.log_path = Path(log_file) if log_file else self.workdir / "tritonserver.log"
        self.proc: subprocess.Popen | None = None

    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)

    def url(self, kind: str = "http", local: bool = False) -> str:
        """Where the server listens (``kind`` http, grpc or metrics); ``local``: the address this machine reaches
        it at (127.0.0.1 / ::1 for a server bound to every interface)."""
        port = {"http": self.ports.http, "grpc": self.ports.grpc, "metrics": self.ports.metrics}[kind]
        host = self.probe_host if local else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'http://' if kind != 'grpc' else ''}{host}:{port}" + ("/metrics" if kind == "metrics" else "")

    def start(self) -> "TritonServer":
        backends = prepare_backends(self.binary, self.workdir)
        cmd = server_command(self.binary, self.repo, backends, self.host, self.ports)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, env=server_env(self.binary), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        except OSError as e:
            raise ServeError(f"cannot start {self.binary.path}: {e}") from None
        finally:
            log.close()
        return self

    def log_tail(self, n: int = LOG_TAIL) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def ready(self) -> bool:
        host = f"[{self.probe_host}]" if ":" in self.probe_host else self.probe_host
        try:
            with urllib.request.urlopen(f"http://{host}:{self.ports.http}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/v2/health/ready``; ServeError (with the log's tail) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServeError(f"tritonserver exited (code {code}) before it was ready; log {self.log_path}:\n"
                                 + self.log_tail())
            if self.ready():
                self._confirm_ours()
                return
            time.sleep(0.25)
        self.stop()
        raise ServeError(f"tritonserver not ready after {timeout:.0f} s; log {self.log_path}:\n" + self.log_tail())

    def _confirm_ours(self) -> None:
        """The server that answered is the one we started: our process listens on the HTTP port (and is alive)."""
        held = listening_ports(self.proc.pid)
        if self.proc.poll() is None and (held is None or self.ports.http in held):
            return
        self.stop()
        raise ServeError(f"HTTP port {self.ports.http} answers, but not from the tritonserver started here (pid "
                         f"{self.proc.pid}): another process holds it; choose another --http-port. Log "
                         f"{self.log_path}:\n" + self.log_tail())

    def wait(self, timeout: float | None = None) -> int | None:
        """The server's exit code once it exited; None if it still runs after ``timeout`` seconds."""
        if self.proc is None:
            return 0
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM to the whole process group (server + stubs), SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return None
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        if self.proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.proc.wait(5)
        _signal_group(pgid, signal.SIGKILL)  # stubs left in the group after the server exited
        return self.proc.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
