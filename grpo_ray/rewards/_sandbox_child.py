"""Trusted launcher of one sandboxed run; started by :func:`grpo_ray.rewards.sandbox.run_python`.

Run once per calling process as ``python -I -S -B _sandbox_child.py SOCKET_FD``: a zygote
that forks one launcher per run (a fork of a warm interpreter costs far less than starting
one). Standard library only; never imported. The launcher (A) reads a ``marshal``-ed spec on
its stdin, isolates, forks the child (C) that runs the untrusted code in-process, enforces
the wall-clock limit, and writes one ``marshal``-ed status dict to its status pipe. A is
trusted and stays outside everything C can reach.

``namespaces`` mode: A drops root to nobody, enters new user (its uid mapped to 0), mount,
PID, network, IPC and UTS namespaces; C is PID 1 of the new PID namespace, so when C exits
or is killed the kernel kills every process it left behind. C makes every inherited mount
read-only, mounts a size-capped tmpfs on /tmp (bound to /var/tmp, /dev/shm and /run too) and
a fresh /proc. (When the caller is root and the interpreter lives where nobody cannot
reach it, e.g. under /root, A first mounts a tmpfs over the blocking directory in a mount
namespace of its own and binds the interpreter's directories back.) C then drops all
capabilities and becomes a minimal init: it forks the process G that runs the code, reaps
whatever is orphaned to it, and when G ends reports G's wait status to A and exits. The code
is therefore not PID 1, where the kernel drops every signal it has no handler for (a program
that killed itself, or got SIGTERM, would have run on and reported success).

``rlimits`` mode (fallback): A becomes a child subreaper so that every descendant, even one
that double-forked or called setsid, is re-parented to A and killed at the end; C drops root
to nobody and runs in a host temporary directory; interpreter directories that nobody cannot
reach are put on ``sys.path`` as ``/proc/self/fd/N/...`` through descriptors opened as root.

Both modes set RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE and
RLIMIT_CORE on C before the code runs.
"""

import _signal as signal
import ctypes
import marshal
import os
import resource
import select
import sys
import time

NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_FLAGS = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, AT_FDCWD = 0x1, 0x2, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # the same on every architecture
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine, -1)  # -1: ENOSYS, so the rlimits fallback
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38

libc = ctypes.CDLL(None, use_errno=True)


class Terminated(Exception):
    """The caller asked (SIGTERM) to stop the run, e.g. because its output overflowed."""


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def drop_root():
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)


def enter_namespaces(hidden):
    """A: expose hidden interpreter directories and become nobody if root, then unshare with
    this uid mapped to 0 inside."""
    if hidden:
        check(libc.unshare(CLONE_NEWNS), "unshare mount namespace")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        expose(hidden)
    drop_root()
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # else /proc/self/*_map stay root-owned
    uid, gid = os.geteuid(), os.getegid()
    check(libc.unshare(CLONE_FLAGS), "unshare")
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"0 {uid} 1")
    write_file("/proc/self/gid_map", f"0 {gid} 1")


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def blocked_ancestor(path):
    """The outermost directory on ``path`` that other users cannot enter or read, or None."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        need = 0o005 if current == path else 0o001
        if os.stat(current).st_mode & need != need:
            return current
    return None


def hidden_dirs(paths):
    """The interpreter directories that nobody could not reach (only a root caller has any)."""
    if os.geteuid() != 0:
        return []
    return sorted({p for p in paths if os.path.isdir(p) and blocked_ancestor(p) is not None})


def expose(hidden):
    """A, root, in a mount namespace of its own: a tmpfs over each blocking directory (hiding
    the rest of it, e.g. /root) with the interpreter directories bound back at their paths."""
    tops = {blocked_ancestor(path) for path in hidden}
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in hidden}
    for top in sorted(tops):
        mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path, fd in fds.items():
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def build_filesystem(spec):
    """C in namespaces mode: read-only view of the host, private tmpfs, fresh /proc."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    check(ret, "mount_setattr / read-only")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmpfs_mb']}m,nr_inodes=4096,mode=1777")
    for name, target in (("shm", "/dev/shm"), ("var-tmp", "/var/tmp"), ("run", "/run")):
        if os.path.isdir(target):
            os.makedirs(f"/tmp/.sandbox/{name}", mode=0o1777)
            mount(f"/tmp/.sandbox/{name}", target, None, MS_BIND)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir("/tmp/work", 0o777)
    return "/tmp/work"


def aliased_path(path, hidden):
    """rlimits mode: ``path`` through an fd A opened as root (/proc/self/fd/N/...), if hidden."""
    for root, fd in hidden.items():
        if path == root or path.startswith(root + "/"):
            return f"/proc/self/fd/{fd}" + path[len(root):]
    return path


def drop_capabilities():
    """C in namespaces mode: empty bounding set and capability sets (uid 0 inside gains nothing on exec)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding capability")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def set_limits(spec):
    cpu = int(spec["timeout_s"]) + 1
    mib = 1024 * 1024
    limits = (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, spec["memory_mb"] * mib),
        (resource.RLIMIT_NPROC, spec["max_processes"]),
        (resource.RLIMIT_FSIZE, spec["file_size_mb"] * mib),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_CORE, 0),
    )
    for res, value in limits:
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))


def child(spec, hidden, go_r, ready_w, exit_w):
    """C: finish isolating, then run the code as __main__ (rlimits) or under init (namespaces);
    never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()  # out of A's process group, or kill(0, ...) from the code would reach A
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if select.select([go_r], [], [], 0)[0]:  # EOF on go_r: A already died, do not outlive it
        os._exit(125)
    try:
        if spec["isolation"] == "namespaces":
            workdir = build_filesystem(spec)
        else:
            workdir = spec["workdir"]
        os.chdir(workdir)
        with open("main.py", "w") as f:
            f.write(spec["code"])
        with open(".stdin", "w") as f:
            f.write(spec["stdin"])
        fd = os.open(".stdin", os.O_RDONLY)
        os.unlink(".stdin")
        os.dup2(fd, 0)
        os.close(fd)
        if spec["isolation"] == "namespaces":
            drop_capabilities()
        else:
            if os.geteuid() == 0:
                os.chown(workdir, NOBODY, NOBODY)
            drop_root()
            check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # keep /proc/self/fd usable
            sys.path[:] = [aliased_path(p, hidden) for p in sys.path]
            spec["site_paths"] = [aliased_path(p, hidden) for p in spec["site_paths"]]
    except Exception as exc:  # reported to A as a setup failure, never as the code's result
        os.write(ready_w, f"{type(exc).__name__}: {exc}".encode())
        os._exit(126)
    path = os.path.join(workdir, "main.py")
    if spec["isolation"] == "namespaces":
        init(spec, path, ready_w, exit_w)
    start_code(spec, hidden, path, ready_w)


def init(spec, path, ready_w, exit_w):
    """C as PID 1 of the PID namespace: fork G to run the code, reap every process orphaned to
    C, and when G ends write its wait status and CPU time to ``exit_w`` and exit (the kernel
    then kills whatever G left running)."""
    pid = os.fork()
    if pid == 0:
        os.close(exit_w)
        start_code(spec, {}, path, ready_w)
    os.close(ready_w)
    while True:
        done, wait_status, usage = os.wait4(-1, 0)
        if done == pid:
            os.write(exit_w, marshal.dumps({"wait_status": wait_status, "cpu": usage.ru_utime + usage.ru_stime}))
            os._exit(0)


def start_code(spec, hidden, path, ready_w):
    """The process that runs the code: limits, no_new_privs, no inherited descriptors, then the code."""
    try:
        set_limits(spec)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    except Exception as exc:  # reported to A as a setup failure, never as the code's result
        os.write(ready_w, f"{type(exc).__name__}: {exc}".encode())
        os._exit(126)
    keep = sorted(hidden.values()) if spec["isolation"] == "rlimits" else []
    for low, high in zip([3] + [fd + 1 for fd in keep], keep + [4096]):
        os.closerange(low, high)
    run_code(spec, path)


def run_code(spec, path):
    sys.argv = [path]
    sys.path[:0] = [os.path.dirname(path)]
    sys.path.extend(spec["site_paths"])
    main = type(sys)("__main__")
    main.__file__ = path
    sys.modules["__main__"] = main
    try:
        exec(compile(spec["code"], path, "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # print like the interpreter would, without this frame
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.exit(1)
    sys.exit(0)


def descendants(root):
    """Every live descendant of ``root``, found through /proc/PID/task/TID/children."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            stack += kids
    return found


def kill_descendants():
    """rlimits mode: stop, then kill, every descendant (orphans are re-parented to this
    subreaper) and reap them, until none is left. Stopping first keeps a fork bomb from
    refilling the slots that each kill frees."""
    me = os.getpid()
    while procs := descendants(me):
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in procs:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def on_sigterm(signum, frame):
    raise Terminated()


def launch(status_fd):
    """A: one run. Its spec arrives on stdin; its status goes to ``status_fd``."""
    spec = marshal.loads(sys.stdin.buffer.read())
    started = time.monotonic()
    os.environ.clear()
    os.environ.update(spec["env"])
    signal.signal(signal.SIGTERM, on_sigterm)

    def report(**status):
        os.write(status_fd, marshal.dumps(status))
        os._exit(0)

    try:
        hidden = hidden_dirs([sys.base_prefix, sys.prefix, *spec["site_paths"]])
        if spec["isolation"] == "namespaces":
            enter_namespaces(hidden)
            hidden = {}
        else:
            hidden = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in hidden}
            check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        pid = os.fork()
    except Exception as exc:  # noqa: BLE001 - any failure here is the sandbox's, reported as such
        report(status="setup_error", error=f"{type(exc).__name__}: {exc}")
    if pid == 0:
        os.close(status_fd)
        os.close(go_w)
        os.close(ready_r)
        os.close(exit_r)
        child(spec, hidden, go_r, ready_w, exit_w)
    os.close(go_r)
    os.close(ready_w)
    os.close(exit_w)
    outcome = None
    try:
        setup_error = b"".join(iter(lambda: os.read(ready_r, 4096), b""))
        if setup_error:
            os.waitpid(pid, 0)
            report(status="setup_error", error=setup_error.decode(errors="replace"))
        pidfd = os.pidfd_open(pid)
        remaining = spec["timeout_s"] - (time.monotonic() - started)
        if not select.select([pidfd], [], [], max(remaining, 0))[0]:
            outcome = "timeout"
    except Terminated:
        outcome = "killed"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if outcome is not None:
        os.kill(pid, signal.SIGKILL)
    _, wait_status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    if spec["isolation"] == "rlimits":
        kill_descendants()
    code_exit = b"".join(iter(lambda: os.read(exit_r, 4096), b""))  # from init: how G, the code, ended
    if code_exit:
        ended = marshal.loads(code_exit)
        wait_status, cpu = ended["wait_status"], ended["cpu"]
    if outcome is None and os.WIFSIGNALED(wait_status):
        outcome = "timeout" if cpu >= int(spec["timeout_s"]) + 1 - 0.05 else "killed"
    code = os.waitstatus_to_exitcode(wait_status)
    report(status=outcome or ("ok" if code == 0 else "error"), returncode=code)


def zygote(sock_fd):
    """Fork one launcher per request: a warm interpreter makes a run cost a fork, not a start-up.

    A request is one message on the unix socket carrying four descriptors (the run's stdin,
    stdout, stderr and status pipes); the answer is the launcher's pid. Exits when the caller
    closes its end of the socket (or dies).
    """
    import socket

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers report through their status pipe
    sock = socket.socket(fileno=sock_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 16, 4)
        except (ConnectionError, OSError):
            return
        if not message or len(fds) != 4:
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
                os.close(fd)
            try:
                launch(fds[3])  # returns only by raising
            except SystemExit:
                raise  # C finished the code: a normal interpreter exit (atexit, flush, exit code)
            except BaseException:  # a launcher bug: never fall back into this loop as a second zygote
                os._exit(1)
        for fd in fds:
            os.close(fd)
        sock.sendall(pid.to_bytes(8, "little"))


if __name__ == "__main__":
    zygote(int(sys.argv[1]))
