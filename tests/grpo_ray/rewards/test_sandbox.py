"""Adversarial tests of grpo_ray.rewards.sandbox, each checked from outside the sandbox.

Every threat is tried in the isolation the host gives (namespaces here and in CI); the
threats that the rlimits fallback also covers are tried there too. A test that needs
namespaces is skipped, with the reason, only where the kernel refuses them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from grpo_ray.rewards import sandbox
from grpo_ray.rewards.sandbox import SandboxResult, isolation_level, run_python

HAS_NAMESPACES = isolation_level() == "namespaces"
needs_namespaces = pytest.mark.skipif(not HAS_NAMESPACES, reason="kernel refuses unprivileged namespaces here")
BOTH_MODES = [pytest.param("namespaces", marks=needs_namespaces), "rlimits"]


def processes_with(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line or name (comm) contains ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                name, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if (marker.encode() in cmdline or marker in name) and rest.split()[0] != "Z":
            found.append(int(pid))
    return found


def new_marker() -> str:
    """A sleep duration no other process uses, also usable as a process name (comm, 15 chars)."""
    return f"1000.{secrets.randbelow(10**8):08d}"


def test_ok_stdout_stdin_and_result_fields():
    result = run_python("import sys\nprint(sys.stdin.read().upper())", stdin="hello")
    assert isinstance(result, SandboxResult)
    assert (result.status, result.stdout, result.returncode) == ("ok", "HELLO\n", 0)
    assert 0 < result.elapsed_s < 5


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_error_exit_code_and_traceback(isolation):
    result = run_python("raise ValueError('boom')", isolation=isolation)
    assert result.status == "error" and result.returncode == 1
    assert "ValueError: boom" in result.stderr
    assert run_python("import sys; sys.exit(3)", isolation=isolation).returncode == 3


SIGNALLED = {
    "kills itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nprint('alive')", signal.SIGKILL),
    "SIGTERMs itself": ("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(2)\nprint('alive')",
                        signal.SIGTERM),
    "gets SIGTERM from its child": (
        "import os, signal, time\nif os.fork() == 0:\n    os.kill(os.getppid(), signal.SIGTERM)\n    os._exit(0)\n"
        "time.sleep(2)\nprint('alive')", signal.SIGTERM),
    "aborts": ("import os\nos.abort()", signal.SIGABRT),
}


@pytest.mark.parametrize("isolation", BOTH_MODES)
@pytest.mark.parametrize("case", list(SIGNALLED))
def test_a_program_ended_by_a_signal_dies_and_is_reported_killed(isolation, case):
    """In namespaces mode the code runs under a minimal init, not as PID 1 (which ignores signals)."""
    code, signum = SIGNALLED[case]
    result = run_python(code, isolation=isolation)
    assert (result.status, result.returncode, result.stdout) == ("killed", -signum, ""), result.stderr
    assert f"killed by signal {signal.Signals(signum).name}" in result.stderr
    assert result.elapsed_s < 2


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_wall_clock_timeout(isolation):
    started = time.monotonic()
    result = run_python("import time\ntime.sleep(60)", timeout_s=0.5, isolation=isolation)
    assert result.status == "timeout"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_cpu_limit(isolation):
    result = run_python("while True:\n    pass", timeout_s=1.0, isolation=isolation)
    assert result.status == "timeout" and result.elapsed_s < 4


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_memory_limit(isolation):
    result = run_python("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", memory_mb=128, isolation=isolation)
    assert result.status == "memory" and "allocated" not in result.stdout


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_file_size_limit(isolation):
    code = textwrap.dedent("""
        with open("big", "wb") as f:
            f.write(b"x" * (8 * 1024 * 1024))
        print("wrote")
    """)
    result = run_python(code, file_size_mb=1, isolation=isolation)
    assert result.status == "error" and "File too large" in result.stderr and "wrote" not in result.stdout


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_output_cap_kills_the_run(isolation):
    result = run_python("while True:\n    print('y' * 1000)", max_output_bytes=100_000, isolation=isolation)
    assert result.status == "killed"
    assert len(result.stdout.encode()) <= 100_000
    assert result.elapsed_s < 3


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_process_count_is_bounded(isolation):
    code = textwrap.dedent("""
        import os, time
        n = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        print(n)
    """)
    result = run_python(code, max_processes=8, isolation=isolation)
    assert result.status == "ok"
    assert int(result.stdout) < 8


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_fork_bomb_setsid_and_background_processes_are_all_reaped(isolation):
    marker = new_marker()  # every process of the run is named after it, or sleeps that long
    code = textwrap.dedent(f"""
        import os, subprocess
        open("/proc/self/comm", "w").write("{marker}")                     # inherited by forks
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)     # background, own session
        subprocess.Popen(["sh", "-c", "nohup sleep {marker} & sleep {marker}"])
        if os.fork() == 0:                                                  # double fork + setsid daemon
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{marker}"])
            os._exit(0)
        while True:                                                         # then a fork bomb
            try:
                os.fork()
            except OSError:
                pass
    """)
    result = run_python(code, timeout_s=1.5, isolation=isolation)
    assert result.status == "timeout", result.stderr
    assert processes_with(marker) == []


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_background_process_dies_when_the_code_returns(isolation):
    marker = new_marker()
    code = f"""import os, subprocess
open("/proc/self/comm", "w").write("{marker}")
subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    import time; time.sleep(300)
print(len([p for p in os.listdir("/proc") if p.isdigit() and "{marker}" in open(f"/proc/{{p}}/comm").read()]))"""
    result = run_python(code, isolation=isolation)
    assert result.status == "ok" and int(result.stdout) >= 2, result.stderr  # the forks were alive
    assert processes_with(marker) == []


VICTIM = textwrap.dedent("""
    import os, signal, sys
    from grpo_ray.rewards.sandbox import run_python
    me = os.getpid()
    code = (
        "import os, signal\\n"
        f"for target in ({me}, -{os.getpgid(me)}, -1, os.getppid()):\\n"
        "    try:\\n"
        "        os.kill(target, signal.SIGKILL)\\n"
        "        print('sent', target)\\n"
        "    except OSError as e:\\n"
        "        print('refused', target, e.errno)\\n"
    )
    result = run_python(code, isolation=sys.argv[1])
    print("caller survived", result.status)
""")


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_code_cannot_kill_its_caller(isolation):
    if isolation == "rlimits" and os.geteuid() != 0:
        pytest.skip("rlimits mode runs the code as the caller's own uid unless the caller is root")
    victim = subprocess.run(
        [sys.executable, "-c", VICTIM, isolation], capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
    )
    assert victim.returncode == 0, victim.stderr
    assert "caller survived" in victim.stdout


@needs_namespaces
def test_no_network_a_loopback_listener_sees_no_connection():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        code = textwrap.dedent(f"""
            import socket
            for family, addr in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET, ("8.8.8.8", 53))):
                try:
                    socket.create_connection(addr, timeout=1).close()
                    print("connected", addr)
                except OSError as e:
                    print("refused", addr, e.errno)
        """)
        result = run_python(code)
        assert result.status == "ok" and "connected" not in result.stdout
        with pytest.raises(socket.timeout):
            listener.accept()


@pytest.mark.parametrize("isolation", BOTH_MODES)
def test_parent_environment_secrets_are_not_visible(isolation, monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("GRPO_SANDBOX_TEST_SECRET", token)
    code = textwrap.dedent(f"""
        import os
        print(dict(os.environ))
        for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["{os.getpid()}", str(os.getppid())]:
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as e:
                print("denied", pid, e.errno)
    """)
    result = run_python(code, isolation=isolation)
    assert result.status == "ok"
    assert token not in result.stdout and "GRPO_SANDBOX_TEST_SECRET" not in result.stdout


@needs_namespaces
def test_writes_outside_its_own_directory_fail_and_its_directory_is_removed(tmp_path):
    host_dir = tmp_path / "world-writable"
    host_dir.mkdir()
    host_dir.chmod(0o777)
    marker = f"grpo-escape-{secrets.token_hex(6)}"
    refused = [str(host_dir / marker), os.path.join(os.getcwd(), marker), f"/{marker}", f"/etc/{marker}"]
    private = [f"/tmp/{marker}", f"/var/tmp/{marker}", f"/dev/shm/{marker}"]  # the sandbox's own tmpfs
    code = textwrap.dedent(f"""
        import ctypes, os
        print("cwd", os.getcwd())
        open("inside.txt", "w").write("fine")
        for path in {refused + private!r}:
            try:
                open(path, "w").write("escaped")
                print("wrote", path)
            except OSError as e:
                print("refused", path, e.errno)
        libc = ctypes.CDLL(None, use_errno=True)
        print("umount", libc.umount2(b"/tmp", 2), "remount", libc.mount(None, b"/", None, 32 | 4096, None))
    """)
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert all(f"refused {path}" in result.stdout for path in refused)
    assert "umount -1 remount -1" in result.stdout
    assert not any(os.path.exists(path) for path in refused + private)
    workdir = result.stdout.split()[1]
    assert not os.path.exists(os.path.join(workdir, "inside.txt"))


def test_rlimits_mode_removes_its_temporary_directory():
    result = run_python("import os\nopen('inside.txt', 'w').write('x')\nprint(os.getcwd())", isolation="rlimits")
    workdir = result.stdout.strip()
    assert result.status == "ok" and os.path.basename(workdir).startswith("grpo-sandbox-")
    assert not os.path.exists(workdir)


def test_a_dead_zygote_is_replaced():
    run_python("pass")
    old = sandbox._zygote.proc
    old.kill()
    old.wait()
    assert run_python("print(5)").stdout == "5\n"
    assert sandbox._zygote.proc.pid != old.pid


def test_fallback_is_logged_once_when_namespaces_fail(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_detected", None)
    real_launch = sandbox._launch
    def launch(spec, mode, cap):
        return (None, "EPERM: unshare") if mode == "namespaces" else real_launch(spec, mode, cap)

    monkeypatch.setattr(sandbox, "_launch", launch)
    with caplog.at_level("WARNING", logger="grpo_ray.rewards"):
        assert run_python("print(2)").stdout == "2\n"
        assert run_python("print(3)").stdout == "3\n"
    assert sandbox._detected == "rlimits"
    warnings = [r for r in caplog.records if "falling back to rlimits" in r.getMessage()]
    assert len(warnings) == 1 and "EPERM: unshare" in warnings[0].getMessage()


def test_forced_namespaces_raise_when_unavailable(monkeypatch):
    monkeypatch.setattr(sandbox, "_launch", lambda spec, mode, cap: (None, "EPERM: unshare"))
    with pytest.raises(sandbox.SandboxError, match="EPERM"):
        run_python("pass", isolation="namespaces")


def _reachable_by_others(path: str) -> bool:
    parts = os.path.realpath(path).split("/")
    return all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(1, len(parts)))


def _interpreter_for_nobody() -> str | None:
    """This interpreter if nobody can run it, else a system Python 3.10+ (the sandbox is stdlib-only)."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        if candidate and _reachable_by_others(candidate):
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                     capture_output=True, text=True)
            if version.stdout.strip() == "True":
                return candidate
    return None


@needs_namespaces
def test_unprivileged_caller_gets_namespaces_too():
    """The path a non-root user takes: run the sandbox from a process that is itself nobody."""
    if os.geteuid() != 0:
        pytest.skip("already covered: this whole suite runs unprivileged")
    python = _interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that nobody can run")
    script = textwrap.dedent("""
        from grpo_ray.rewards.sandbox import isolation_level, run_python
        code = ("import os; print(os.getuid(), sorted((p for p in os.listdir('/proc') if p.isdigit()), key=int) "
                "== ['1', str(os.getpid())])")  # only the sandbox's init and the code itself
        inside = run_python(code).stdout.split()
        print(isolation_level(), *inside)
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": repo}, user=65534, group=65534, extra_groups=[])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["namespaces", "0", "True"]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", memory_mb=0)
    with pytest.raises(ValueError, match="isolation"):
        run_python("pass", isolation="docker")
