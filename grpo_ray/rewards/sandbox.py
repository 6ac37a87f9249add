"""Run untrusted Python (model-written code) with bounded time, memory, processes and output.

:func:`run_python` has a trusted launcher (``_sandbox_child.py``) isolate and run the code
and report how it ended. Launchers are forked from a zygote that each calling process starts
on first use and that exits with it, so a run costs a fork rather than an interpreter
start-up. Isolation is chosen at run time, once per process:

* ``namespaces`` (preferred; unprivileged user namespaces, no setuid helper needed): the code
  runs in its own PID namespace under a minimal init (PID 1), so signals reach it as in any
  process and everything it forks dies with it when it ends (setsid or not); it has no
  network (empty network namespace), sees the host file system read-only with a private,
  size-capped tmpfs at /tmp, /var/tmp, /dev/shm and /run, a /proc that shows only its own
  processes, runs as nobody (when the caller is root) with no capabilities, and gets a clean
  environment.
* ``rlimits`` (fallback, logged once as a warning): a subreaper launcher that kills every
  descendant at the end and a host temporary directory removed afterwards. When the caller is
  root the code runs as nobody; otherwise it runs as the caller's own user, and could signal
  the caller or read its /proc entries. The network and world-writable host directories are
  reachable.

Both modes bound CPU time, address space, process count, file size and open files with
rlimits, the wall-clock time with a timer, and the captured output with a byte cap. Total
memory is bounded by ``max_processes x memory_mb`` (rlimits are per process; cgroups would
need privileges).
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import selectors
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("grpo_ray.rewards")

ISOLATIONS = ("namespaces", "rlimits")
_LAUNCHER = Path(__file__).with_name("_sandbox_child.py")
#: Seconds past ``timeout_s`` after which the caller stops waiting for the launcher itself.
_GRACE_S = 2.0
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

_detected: str | None = None
_detect_lock = threading.Lock()


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the code it was given)."""


@dataclass(frozen=True)
class SandboxResult:
    """How one run ended. ``status``: ok | error (non-zero exit) | timeout (wall or CPU limit) |
    memory (MemoryError under the address-space limit) | killed (a signal, or output over the cap).
    ``returncode`` is the exit code, or minus the signal that ended the program (as in subprocess)."""

    status: str
    stdout: str
    stderr: str
    returncode: int
    elapsed_s: float


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_processes: int = 16,
    file_size_mb: int = 16,
    tmpfs_mb: int = 64,
    max_output_bytes: int = 1 << 20,
    isolation: str | None = None,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandbox, feeding it ``stdin``; see the module docstring.

    ``isolation`` forces ``"namespaces"`` (raises :class:`SandboxError` where unavailable) or
    ``"rlimits"``; ``None`` uses the strongest available one.
    """
    if not isinstance(code, str) or not isinstance(stdin, str):
        raise TypeError("code and stdin must be strings")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r}: give a positive number of seconds")
    for name, value in (("memory_mb", memory_mb), ("max_processes", max_processes), ("file_size_mb", file_size_mb),
                        ("tmpfs_mb", tmpfs_mb), ("max_output_bytes", max_output_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: give an integer >= 1")
    if isolation is not None and isolation not in ISOLATIONS:
        raise ValueError(f"isolation={isolation!r}: choose one of {ISOLATIONS} or None")
    spec = {
        "code": code, "stdin": stdin, "timeout_s": float(timeout_s), "memory_mb": memory_mb,
        "max_processes": max_processes, "file_size_mb": file_size_mb, "tmpfs_mb": tmpfs_mb,
        "site_paths": site.getsitepackages(),
    }
    mode = isolation or _detected or "namespaces"
    result, error = _launch(spec, mode, max_output_bytes)
    if error is not None and isolation is None and mode == "namespaces":
        _fall_back(error)
        mode = "rlimits"
        result, error = _launch(spec, mode, max_output_bytes)
    if error is not None:
        raise SandboxError(f"sandbox ({mode}) could not start: {error}")
    if isolation is None:
        _remember(mode)
    return result


def isolation_level() -> str:
    """The isolation :func:`run_python` uses in this process (probes once if not yet known)."""
    if _detected is None:
        run_python("pass")
    return _detected


def _remember(mode: str) -> None:
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = mode


def _fall_back(error: str) -> None:
    global _detected
    with _detect_lock:
        if _detected != "rlimits":
            logger.warning(
                "sandbox: namespaces unavailable (%s); falling back to rlimits isolation "
                "(no network or file-system isolation)", error,
            )
        _detected = "rlimits"


class _Zygote:
    """This process's launcher zygote (``_sandbox_child.py``), started on first use."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(_LAUNCHER), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=_ENV, cwd="/", start_new_session=True, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours
        self.owner = os.getpid()

    def spawn(self, fds: list[int]) -> int:
        """Fork a launcher wired to ``fds`` (stdin, stdout, stderr, status); its pid."""
        socket.send_fds(self.sock, [b"run"], fds)
        answer = b""
        while len(answer) < 8:
            chunk = self.sock.recv(8 - len(answer))
            if not chunk:
                raise ConnectionError("sandbox zygote exited")
            answer += chunk
        return int.from_bytes(answer, "little")



_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def _spawn_launcher(fds: list[int]) -> int:
    """A launcher pid from this process's zygote, (re)starting the zygote when needed (first use,
    after a fork, or after it died)."""
    global _zygote
    with _zygote_lock:
        if _zygote is not None and _zygote.owner == os.getpid() and _zygote.proc.poll() is None:
            try:
                return _zygote.spawn(fds)
            except OSError:
                pass  # it died between the check and the request: start another
        _zygote = _Zygote()
        return _zygote.spawn(fds)


def _launch(spec: dict, mode: str, max_output_bytes: int) -> tuple[SandboxResult | None, str | None]:
    """One launcher run; returns (result, None) or (None, setup error)."""
    workdir = tempfile.mkdtemp(prefix="grpo-sandbox-") if mode == "rlimits" else None
    env = dict(_ENV, HOME=workdir or "/tmp/work", TMPDIR=workdir or "/tmp")
    payload = marshal.dumps(dict(spec, isolation=mode, workdir=workdir, env=env))
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    status_r, status_w = os.pipe()
    theirs, ours = [stdin_r, stdout_w, stderr_w, status_w], [stdin_w, stdout_r, stderr_r, status_r]
    started = time.monotonic()
    try:
        pidfd = os.pidfd_open(_spawn_launcher(theirs))  # the launcher waits for its spec: no pid reuse yet
        for fd in theirs:
            os.close(fd)
        theirs = []
        try:
            stdout, stderr, overflow = _pump(pidfd, stdin_w, stdout_r, stderr_r, payload,
                                             started + spec["timeout_s"] + _GRACE_S, max_output_bytes)
            ours.remove(stdin_w)
            overran = not select.select([status_r], [], [], _GRACE_S)[0]
            if overran:  # the launcher missed its own deadline: take it down
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            raw = b"".join(iter(lambda: os.read(status_r, 65536), b""))
        finally:
            os.close(pidfd)
    finally:
        for fd in theirs + ours:
            os.close(fd)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if raw:
        report = marshal.loads(raw)
    elif overran:
        report = {"status": "timeout", "returncode": -signal.SIGKILL}
    else:
        tail = stderr.decode(errors="replace").strip().rsplit("\n", 1)[-1]
        return None, f"launcher exited without a report: {tail}"
    if report["status"] == "setup_error":
        return None, report["error"]
    out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    status = report["status"]
    if overflow:
        status = "killed"
        err += f"\n[sandbox] output exceeded {max_output_bytes} bytes; run killed"
    elif status == "error" and err.rstrip().rsplit("\n", 1)[-1].startswith("MemoryError"):
        status = "memory"
    elif status == "killed" and report["returncode"] < 0:
        err += f"\n[sandbox] the program was killed by signal {_signal_name(-report['returncode'])}"
    return SandboxResult(status, out, err, report["returncode"], elapsed), None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _pump(pidfd: int, stdin_w: int, stdout_r: int, stderr_r: int, payload: bytes, deadline: float, cap: int
          ) -> tuple[bytes, bytes, bool]:
    """Send the spec, then collect stdout/stderr (at most ``cap`` bytes in all) until EOF or deadline."""
    try:
        with os.fdopen(os.dup(stdin_w), "wb") as f:
            f.write(payload)
    except BrokenPipeError:
        pass
    os.close(stdin_w)
    chunks: dict[int, list[bytes]] = {stdout_r: [], stderr_r: []}
    total, overflow = 0, False
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                if not overflow:
                    keep = data[: cap - total]
                    chunks[key.fd].append(keep)
                    total += len(keep)
                    if len(keep) < len(data):
                        overflow = True
                        signal.pidfd_send_signal(pidfd, signal.SIGTERM)  # the launcher kills the run and reports
    return b"".join(chunks[stdout_r]), b"".join(chunks[stderr_r]), overflow
