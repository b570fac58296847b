"""`shoal serve --workers N`: N nodes on one machine behind one port, so that one command
uses every core.

A node runs its Python on about one core (the GIL), so a machine with more cores runs
more nodes. Each worker is a full node (``python -m shoal serve``: its own engine, its own
data directory ``DATA/workers/<i>``) and the workers are a cluster on the machine's one
store (docs/operations.md, "One machine, all cores"): each database is led by one worker,
and any worker serves any request, forwarding what another leads. The supervisor (this
module) runs no engine and imports none; it only places, starts and watches the workers:

- **The public port.** It checks that nothing listens on host:port (a bind without
  SO_REUSEPORT), then keeps the port with a socket bound with SO_REUSEPORT that never
  listens, so no other program takes it while a worker restarts. Each worker binds
  host:port with SO_REUSEPORT itself once its engine is open, so the kernel spreads new
  connections over the workers that serve, never to one still starting.
- **The private ports.** It binds a loopback socket per worker on a port the kernel picks
  and keeps it listening for its whole life: the worker inherits it (its descriptor number
  on its command line) and advertises ``http://127.0.0.1:<port>``, so a restarted worker
  keeps its URL, and a request another worker forwards to it while it restarts waits in
  the socket's queue instead of failing.
- **Settings.** Every resolved setting goes to the workers as a ``SHOAL_*`` variable
  (secrets never on a command line), with the worker's own ``data``, ``advertise_url``
  and ``workers = 1``, and the store made explicit (the default ``file://DATA/store`` of
  the data root): one store, one admin token (the store's generated one, or the setting).
- **Signals.** SIGTERM or SIGINT is passed on to every worker once (each hands its
  databases over and stops, as any cluster node); the supervisor waits for them all and
  exits 0. A second signal is passed on too (the workers then stop at once). The workers
  run in their own session (a terminal's Ctrl-C reaches the supervisor only, so a worker
  gets one signal, not two) and get SIGTERM if the supervisor dies (PR_SET_PDEATHSIG).
- **Restarts.** A worker that exits on its own is started again after a short backoff
  (0.5 s, doubling while it keeps failing to start, at most 10 s), with one line logged.
  A worker whose first start fails, or that fails to start ``GIVE_UP`` times in a row,
  stops them all and the supervisor exits 1: a bad setting is not retried for ever.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from shoal.server import stderr
from shoal.settings import SETTINGS, Settings

log = logging.getLogger("shoal.workers")

BACKOFF = 0.5  # seconds before a worker that exited is started again (doubled per failed start)
MAX_BACKOFF = 10.0
GIVE_UP = 5  # failed starts in a row (none of them served) after which the supervisor stops
STOP_LIMIT = 90.0  # seconds the workers get to stop (a handover takes up to 60) before kill -9
POLL = 0.1  # seconds between looks at the workers
# how a worker ends after the signal it was passed: uvicorn raises the signal it caught again
# once it has stopped, so a node stopped cleanly dies of it
CLEAN = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port (SO_REUSEADDR, and SO_REUSEPORT when asked), not
    yet listening: the server's ``create_server`` listens on it."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def die_with_parent() -> None:
    """In a worker: get SIGTERM when the supervisor dies (Linux), so that a supervisor
    killed with ``kill -9`` leaves no worker serving the port; exit at once if it is
    already gone."""
    parent = os.getppid()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(1)


@dataclass
class _Worker:
    """One worker's place (index, data directory, private socket) and its current process."""

    index: int
    data: Path
    private: socket.socket  # listening; closed once the supervisor stops
    port: int  # the private socket's
    proc: subprocess.Popen[bytes] | None = None
    up: threading.Event = field(default_factory=threading.Event)  # this process answered
    served: bool = False  # some process of this place has answered /health
    failures: int = 0  # starts in a row whose process exited before it answered
    start_at: float | None = None  # when to start it again (monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Supervisor:
    """Starts and watches ``settings.workers`` worker nodes (see the module's docstring).
    Construction only sets fields; :meth:`start` does the work and returns the exit
    status."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.data_dir
        self.workers: list[_Worker] = []
        self.keeper: socket.socket | None = None  # holds the public port, never listens
        self.port = settings.port  # the public port (resolved when the setting is 0)
        self.signals: list[int] = []  # SIGTERM/SIGINT received
        self.passed = 0  # of them passed on to the workers
        self.stop_deadline = 0.0

    # -- the whole run -----------------------------------------------------------------------
    def start(self) -> int:
        """Bind, start every worker, supervise until they stopped; 0 after a clean stop."""
        stderr.configure(self.settings.log_level, json_lines=self.settings.access_log)
        try:
            (self.root / "workers").mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)  # as a node keeps its data directory
        except OSError as exc:
            stderr.announce(f"cannot start: cannot make {self.root / 'workers'}: "
                            f"{exc.strerror or exc}", logging.ERROR)
            return 1
        try:
            self._bind()
        except OSError as exc:
            stderr.announce(f"cannot start: cannot listen on {self.settings.host}:"
                            f"{self.settings.port}: {exc.strerror or exc}", logging.ERROR)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signalled)
        try:
            return self._run()
        finally:
            self._close()

    def _bind(self) -> None:
        """Check the public port is free (nothing listens there, SO_REUSEPORT or not), keep
        it, and bind each worker's private loopback socket."""
        with listening_socket(self.settings.host, self.settings.port, reuse_port=False) as probe:
            self.port = int(probe.getsockname()[1])
        self.keeper = listening_socket(self.settings.host, self.port, reuse_port=True)
        for i in range(self.settings.workers):
            private = listening_socket("127.0.0.1", 0, reuse_port=False)
            private.listen(4096)
            self.workers.append(_Worker(i, self.root / "workers" / str(i), private,
                                        int(private.getsockname()[1])))

    def _run(self) -> int:
        stderr.announce(f"serving {self.root} on http://{self.settings.host}:{self.port} with "
                        f"{len(self.workers)} workers (supervisor pid {os.getpid()})")
        first = self.workers[0]
        self._spawn(first)  # alone: it makes the store a cluster's, and the admin token
        started = 1
        while True:
            self._pass_signals()
            if self.passed:
                if all(w.proc is None or w.proc.poll() is not None for w in self.workers):
                    return self._stopped()
                if time.monotonic() > self.stop_deadline:
                    self.stop_deadline = float("inf")
                    for w in self.workers:
                        if w.proc is not None and w.proc.poll() is None:
                            log.error("worker %d (pid %d) did not stop in %g s: killed",
                                      w.index, w.proc.pid, STOP_LIMIT)
                            w.proc.kill()
            else:
                for w in self.workers[:started]:
                    if self._watch(w):
                        return self._gave_up(w)
                if started == 1 and first.served:
                    self._publish_admin_token(first)
                    for w in self.workers[1:]:
                        self._spawn(w)
                    started = len(self.workers)
            time.sleep(POLL)

    # -- one worker --------------------------------------------------------------------------
    def _spawn(self, worker: _Worker) -> None:
        """Start the worker's process and a thread that sets ``up`` once it answers."""
        worker.up = threading.Event()
        worker.start_at = None
        worker.data.mkdir(parents=True, exist_ok=True)
        fd = worker.private.fileno()
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", "serve", "--worker-socket", str(fd),
             "--worker-count", str(len(self.workers))],
            env=self._environment(worker), pass_fds=(fd,), start_new_session=True)
        threading.Thread(target=_wait_up, args=(worker.proc, worker.url, worker.up),
                         name=f"shoal-worker-{worker.index}-up", daemon=True).start()

    def _environment(self, worker: _Worker) -> dict[str, str]:
        """The worker's environment: ours without SHOAL_* settings (nor SHOAL_CONFIG), then
        every resolved setting, with the worker's own place."""
        names = {"SHOAL_CONFIG"} | {"SHOAL_" + s.name.upper() for s in SETTINGS}
        env = {k: v for k, v in os.environ.items() if k not in names}
        values = {s.name: getattr(self.settings, s.name) for s in SETTINGS} | {
            "data": str(worker.data), "port": self.port, "store": self.settings.store_url,
            "advertise_url": worker.url, "workers": 1}
        env.update({"SHOAL_" + name.upper(): str(value) for name, value in values.items()
                    if value is not None})
        return env

    def _watch(self, worker: _Worker) -> bool:
        """Look at one worker: note that it serves, restart it when it exited and its
        backoff has passed. True when the supervisor should give up."""
        proc = worker.proc
        if proc is None:
            if worker.start_at is not None and time.monotonic() >= worker.start_at:
                self._spawn(worker)
            return False
        if worker.up.is_set():
            worker.served, worker.failures = True, 0
        code = proc.poll()
        if code is None:
            return False
        worker.proc = None
        if not worker.up.is_set():
            worker.failures += 1
            if not worker.served or worker.failures >= GIVE_UP:
                worker.proc = proc  # for _gave_up's message
                return True
        delay = min(MAX_BACKOFF, BACKOFF * 2 ** worker.failures)
        worker.start_at = time.monotonic() + delay
        stderr.announce(f"worker {worker.index} (pid {proc.pid}) exited with {_status(code)}; "
                        f"starting it again in {delay:g} s", logging.WARNING)
        return False

    # -- the end ------------------------------------------------------------------------------
    def _signalled(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)  # passed on by the loop (_pass_signals), not in a handler

    def _pass_signals(self) -> None:
        """Pass SIGTERM/SIGINT on to every worker: the first as SIGTERM (each hands its
        databases over), a later one as it came (they stop at once)."""
        while len(self.signals) > self.passed:
            sig = self.signals[self.passed]
            self.passed += 1
            if self.passed == 1:
                self.stop_deadline = time.monotonic() + STOP_LIMIT
                stderr.announce(f"{signal.Signals(sig).name}: stopping {len(self.workers)} "
                                "workers")
            for w in self.workers:
                w.start_at = None
                if w.proc is not None and w.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.send_signal(signal.SIGTERM if self.passed == 1 else sig)
            self._close()  # each worker holds its own copies while it hands over

    def _stopped(self) -> int:
        codes = [w.proc.returncode for w in self.workers if w.proc is not None]
        bad = [c for c in codes if c not in CLEAN]
        stderr.announce("every worker stopped" + (
            f" ({len(bad)} with {', '.join(map(_status, bad))})" if bad else ""))
        return 1 if bad else 0

    def _gave_up(self, worker: _Worker) -> int:
        """A worker cannot start: stop the others and say so (its own lines say why)."""
        proc = worker.proc
        status = _status(proc.returncode) if proc is not None else "?"
        more = f" {worker.failures} times in a row" if worker.served else ""
        stderr.announce(f"cannot start: worker {worker.index} exited with {status} before it "
                        f"served{more}; stopping the workers", logging.ERROR)
        others = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for p in others:
            p.send_signal(signal.SIGTERM)
        for p in others:
            try:
                p.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return 1

    def _close(self) -> None:
        for sock in [self.keeper, *(w.private for w in self.workers)]:
            if sock is not None:
                sock.close()

    def _publish_admin_token(self, worker: _Worker) -> None:
        """Copy the first worker's cache of the generated admin token to DATA/admin-token,
        where a single node keeps it (``shoal`` client commands read it there)."""
        if self.settings.admin_token:
            return
        try:
            token = (worker.data / "admin-token").read_text()
            target = self.root / "admin-token"
            if not target.exists() or target.read_text() != token:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(token)
        except OSError as exc:
            log.warning("could not copy the admin token to %s: %s", self.root, exc)
            return
        stderr.announce(f"admin token is in {self.root / 'admin-token'}")


def _wait_up(proc: subprocess.Popen[bytes], url: str, up: threading.Event) -> None:
    """Set ``up`` once the worker answers /health on its private port (any status: it
    serves), unless its process exits first."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
    while proc.poll() is None:
        try:
            with direct.open(url + "/health", timeout=1.0):
                pass
        except urllib.error.HTTPError:
            pass  # answered: 503 is a node that serves, read-only
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        up.set()
        return


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
