"""Run model-written Python in a bubblewrap sandbox with limits the kernel enforces.

The engine calls `run_python(code)` for each <|python_start|>...<|python_end|> span and splices
`tool_output_text(result)` between <|output_start|> and <|output_end|>. Guarantees and limits
are in docs/sandbox.md. Every call is independent (no shared state but a uid pool), so server
threads may call it concurrently; it returns within `wall_seconds` plus a short grace period.
"""
from __future__ import annotations

import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Literal, Optional

WORKDIR = "/sandbox"  # the private tmpfs inside the sandbox: cwd, HOME, TMPDIR and /tmp
_GRACE_SECONDS = 2.0  # after a kill, how long we wait for pipes to close and bwrap to be reaped
_STARTED = b"\0sandbox-up\n"  # the launcher's first write to stderr: bwrap set the sandbox up


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here (bubblewrap missing, namespaces refused, bad config)."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one run; all are enforced by the kernel (rlimits, namespaces, tmpfs size)."""

    cpu_seconds: int = 5  # RLIMIT_CPU per process: SIGXCPU at this, SIGKILL one second later
    wall_seconds: float = 10.0  # whole run; then the sandbox's pid namespace is killed
    memory_mb: int = 512  # RLIMIT_AS (virtual memory) per process
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file a process may write
    disk_mb: int = 64  # size of the private tmpfs mounted at /sandbox (counts against RAM)
    max_processes: int = 8  # RLIMIT_NPROC: processes + threads of the sandbox uid
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_limit_bytes: int = 16_384  # per stream; the head and a tail are kept, the middle cut
    backend: Literal["auto", "setuid", "userns"] = "auto"  # auto: setuid as root, else userns
    python: str = ""  # interpreter run inside; "" = the one running this code
    bwrap: str = "bwrap"  # bubblewrap executable (name on PATH or absolute path)
    uid: int = 65534  # userns backend started by root: the unprivileged uid bwrap runs as
    uid_base: int = 2_000_000_000  # setuid backend: each concurrent run gets its own uid from here
    seccomp: bool = True  # also refuse non-AF_UNIX sockets and namespace/ptrace/bpf syscalls
    extra_ro_paths: tuple[str, ...] = ()  # more host paths to bind read-only (e.g. a venv)


@dataclass(frozen=True)
class SandboxResult:
    ok: bool  # the program exited 0 by itself, within all limits
    stdout: str
    stderr: str
    error: Optional[str]  # a one-line tool error, e.g. "time limit exceeded (2 s CPU)"
    exit_code: int  # negative: killed by that signal (subprocess convention)
    wall_time: float
    truncated: bool  # some output was cut (see output_limit_bytes)


# The launcher runs inside the sandbox before the untrusted code: it reads the code from stdin,
# sets the rlimits, drops to the run's uid (setuid backend) and execs a fresh interpreter.
_LAUNCHER = r"""
import os, resource as R, sys
os.write(2, b'\0sandbox-up\n')
cpu, mem, fsz, nproc, nofile, uid, path = sys.argv[1:8]
src = b''
while True:
    b = os.read(0, 1 << 16)
    if not b:
        break
    src += b
fd = os.open('/dev/null', os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
for res, v in ((R.RLIMIT_CORE, 0), (R.RLIMIT_AS, int(mem)), (R.RLIMIT_FSIZE, int(fsz)),
               (R.RLIMIT_NOFILE, int(nofile)), (R.RLIMIT_NPROC, int(nproc))):
    R.setrlimit(res, (v, v))
R.setrlimit(R.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
if int(uid) >= 0:
    os.setgroups([]); os.setresgid(int(uid), int(uid), int(uid)); os.setresuid(int(uid), int(uid), int(uid))
os.umask(0o077)
with open(path, 'wb') as f:
    f.write(src)
os.execv(sys.executable, [sys.executable, '-I', '-B', '-u', '-X', 'utf8', path])
"""

# ---- uid pool (setuid backend): RLIMIT_NPROC counts per uid, so concurrent runs need distinct ones
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _take_uid(base: int) -> int:
    offset = (os.getpid() * 64) % (1 << 20)  # separate pools for separate server processes
    with _uid_lock:
        for i in range(1 << 20):
            uid = base + (offset + i) % (1 << 20)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid
    raise SandboxUnavailable("no free sandbox uid")


def _give_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


# ---- seccomp: a small deny-list BPF program handed to bwrap --seccomp (x86_64 and aarch64 only)
_ARCH = {  # machine: (AUDIT_ARCH, {syscall: nr}) for the calls we refuse with EPERM
    "x86_64": (0xC000003E, {"socket": 41, "ptrace": 101, "mount": 165, "umount2": 166,
                            "pivot_root": 155, "unshare": 272, "setns": 308, "keyctl": 250,
                            "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
                            "userfaultfd": 323, "io_uring_setup": 425, "kexec_load": 246,
                            "open_by_handle_at": 304, "process_vm_writev": 311}),
    "aarch64": (0xC00000B7, {"socket": 198, "ptrace": 117, "mount": 40, "umount2": 39,
                             "pivot_root": 41, "unshare": 97, "setns": 268, "keyctl": 219,
                             "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
                             "userfaultfd": 282, "io_uring_setup": 425, "kexec_load": 104,
                             "open_by_handle_at": 265, "process_vm_writev": 271}),
}


def _seccomp_program() -> Optional[bytes]:
    """BPF: another arch's ABI -> kill; x32, socket(family != AF_UNIX) and the deny list -> EPERM."""
    arch = _ARCH.get(os.uname().machine)
    if arch is None:
        return None
    audit_arch, nrs = arch
    allow, eperm, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    deny = [nr for name, nr in nrs.items() if name != "socket"]
    # layout: 0 ld arch | 1 jeq | 2 ret kill | 3 ld nr | 4 jge x32 | 5 jeq socket | deny... |
    #         ret allow | ld arg0 | jeq AF_UNIX | ret eperm | ret allow
    n_deny = len(deny)
    i_allow = 6 + n_deny
    i_sock, i_eperm = i_allow + 1, i_allow + 3
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill), (ld, 0, 0, 0),
            (jge, i_eperm - 5, 0, 0x40000000), (jeq, i_sock - 6, 0, nrs["socket"])]
    for j, nr in enumerate(deny):
        prog.append((jeq, i_eperm - (6 + j) - 1, 0, nr))
    prog += [(ret, 0, 0, allow), (ld, 0, 0, 16), (jeq, 1, 0, 1), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


# ---- building the bwrap command line
def _ro_binds(python: str, extra: tuple[str, ...]) -> list[str]:
    """Host paths the sandbox sees read-only: /usr, a few /etc files, the interpreter's prefix."""
    paths = {os.path.dirname(os.path.dirname(p)) for p in (os.path.abspath(python), os.path.realpath(python))}
    if python == sys.executable:
        paths |= {sys.prefix, sys.base_prefix}
    paths |= set(extra)
    return sorted(os.path.realpath(p) for p in paths if p)


def _bwrap_argv(cfg: SandboxConfig, bwrap: str, mode: str, python: str, uid: int, seccomp_fd: int) -> list[str]:
    a = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
         "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if mode == "userns":
        a += ["--unshare-user", "--disable-userns"]
    else:  # started as root: keep only what the launcher needs to drop to the run's uid
        a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    a += ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "lib32", "sbin"):
        host = "/" + link
        if os.path.islink(host):
            a += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            a += ["--ro-bind", host, host]
    for f in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime"):
        a += ["--ro-bind-try", "/etc/" + f, "/etc/" + f]
    made = {"/", "/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin"}
    for path in _ro_binds(python, cfg.extra_ro_paths):
        if path == "/usr" or path.startswith("/usr/"):
            continue
        parts = path.strip("/").split("/")
        for k in range(1, len(parts)):  # bwrap would create missing parents 0700
            parent = "/" + "/".join(parts[:k])
            if parent not in made:
                made.add(parent)
                a += ["--perms", "0755", "--dir", parent]
        a += ["--ro-bind", path, path]
        made.add(path)
    size = str(cfg.disk_mb << 20)
    a += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777", "--size", size, "--tmpfs", "/dev/shm",
          "--remount-ro", "/dev", "--perms", "01777", "--size", size, "--tmpfs", WORKDIR]
    if "/tmp" not in made:  # a bound path under /tmp (e.g. a venv) keeps /tmp a read-only dir
        a += ["--symlink", WORKDIR, "/tmp"]
    a += ["--remount-ro", "/", "--chdir", WORKDIR, "--clearenv"]
    for k, v in (("HOME", WORKDIR), ("TMPDIR", WORKDIR), ("PATH", "/usr/local/bin:/usr/bin:/bin"),
                 ("LANG", "C.UTF-8"), ("PYTHONHASHSEED", "0"), ("OMP_NUM_THREADS", "1"),
                 ("OPENBLAS_NUM_THREADS", "1")):  # thread pools would eat the process limit
        a += ["--setenv", k, v]
    if seccomp_fd >= 0:
        a += ["--seccomp", str(seccomp_fd)]
    a += ["--", python, "-I", "-S", "-c", _LAUNCHER, str(cfg.cpu_seconds), str(cfg.memory_mb << 20),
          str(cfg.file_size_mb << 20), str(cfg.max_processes), str(cfg.max_open_files), str(uid),
          WORKDIR + "/main.py"]
    return a


def _check(cfg: SandboxConfig) -> tuple[str, str, str]:
    """Validate cfg; return (mode, python, bwrap path) or raise a clear error."""
    for name in ("cpu_seconds", "wall_seconds", "memory_mb", "file_size_mb", "disk_mb",
                 "max_processes", "max_open_files", "output_limit_bytes"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(cfg, name)!r}")
    bwrap = shutil.which(cfg.bwrap)
    if bwrap is None:
        raise SandboxUnavailable(f"sandbox unavailable: bubblewrap ({cfg.bwrap!r}) not found; "
                                 "install it (Debian/Ubuntu: apt-get install -y bubblewrap)")
    root = os.geteuid() == 0
    mode = cfg.backend if cfg.backend != "auto" else ("setuid" if root else "userns")
    if mode == "setuid" and not root:
        raise SandboxUnavailable("sandbox backend 'setuid' needs root; use backend='userns' or 'auto'")
    python = cfg.python or sys.executable
    if not os.access(python, os.X_OK):
        raise SandboxUnavailable(f"sandbox python {python!r} is not executable; set SandboxConfig.python")
    if mode == "userns" and root:  # bwrap will run as cfg.uid: every bound path must be reachable
        for path in _ro_binds(python, cfg.extra_ro_paths):
            d = path
            while d != "/":
                if os.path.isdir(d) and not os.stat(d).st_mode & 0o001:
                    raise SandboxUnavailable(
                        f"sandbox backend 'userns' runs as uid {cfg.uid}, which cannot enter {d} "
                        f"(needed for {path}); use backend='setuid' or a python outside it "
                        "(e.g. SandboxConfig.python='/usr/bin/python3')")
                d = os.path.dirname(d)
    return mode, python, bwrap


# ---- running and reading
class _Capture:
    """Keep the first `limit` bytes of a stream and a rolling tail; count what is dropped."""

    def __init__(self, limit: int, marker: bytes = b""):
        self.limit, self.tail_len = limit, max(limit // 4, 1)
        self.head, self.tail, self.total = bytearray(), bytearray(), 0
        self.marker, self.seen_marker = marker, False  # marker: dropped if it opens the stream

    def add(self, data: bytes) -> None:
        if self.marker:  # written in one small write(), so the first read holds all of it
            self.seen_marker = data.startswith(self.marker)
            data = data[len(self.marker):] if self.seen_marker else data
            self.marker = b""
        self.total += len(data)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[:-self.tail_len]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        if not self.truncated:
            return self.head.decode("utf-8", "replace")
        keep = bytes(self.head[: self.limit - len(self.tail)])
        cut = self.total - len(keep) - len(self.tail)
        return (keep.decode("utf-8", "replace") + f"\n[... {cut} bytes truncated ...]\n"
                + bytes(self.tail).decode("utf-8", "replace"))


def _pump(proc: subprocess.Popen, outs: dict, deadline: float, flood: int) -> tuple[Optional[int], str]:
    """Read stdout/stderr until EOF and exit, the deadline, or `flood` bytes on a stream; kill then.

    -> (wait status or None, why we killed it: "" | "wall" | "output")."""
    sel = selectors.DefaultSelector()
    for f, cap in outs.items():
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ, cap)
    status, killed = None, ""
    try:
        while True:
            now = time.monotonic()
            if status is None:
                pid, st = os.waitpid(proc.pid, os.WNOHANG)
                if pid:
                    status = st
            if status is not None and not sel.get_map():
                break
            if now >= deadline:
                if status is None and not killed:
                    _kill(proc)
                    killed = "wall"
                    deadline = now + _GRACE_SECONDS
                    continue
                break  # pipes still held open past the grace period: give up on them
            for key, _ in sel.select(timeout=min(0.05, max(deadline - now, 0))):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if data:
                    key.data.add(data)
                    if key.data.total > flood and not killed:
                        if status is None:  # never signal a reaped pid: it may be reused
                            _kill(proc)
                        killed, deadline = "output", time.monotonic() + _GRACE_SECONDS
                else:
                    sel.unregister(key.fileobj)
            if not sel.get_map() and status is None:
                time.sleep(0.005)
    finally:
        sel.close()
    if status is None:  # killed (or grace ran out): reap without hanging
        _kill(proc)
        end = time.monotonic() + _GRACE_SECONDS
        while status is None and time.monotonic() < end:
            pid, st = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                status = st
            else:
                time.sleep(0.01)
    if status is not None:
        proc.returncode = os.waitstatus_to_exitcode(status)
    return status, killed


def _flood_bytes(cfg: SandboxConfig) -> int:
    """Output past which the run is stopped rather than drained until the wall limit."""
    return max(64 * cfg.output_limit_bytes, 1 << 20)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL bwrap (its own process group); --die-with-parent then takes down the pid namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(cfg: SandboxConfig, code: int, wall: float, killed: str, err: str, started: bool,
              truncated: bool) -> Optional[str]:
    """A one-line tool error from how the run ended (signals, our kills, the traceback's last lines)."""
    tail = err[-2000:]
    sig = -code if code < 0 else 0
    if killed == "wall":
        return f"time limit exceeded ({cfg.wall_seconds:g} s wall)"
    if killed == "output":
        return f"output limit exceeded (stopped after {_flood_bytes(cfg)} bytes)"
    if not started:
        return "sandbox failed to start: " + (err.strip().splitlines() or ["unknown error"])[-1]
    # the hard CPU limit (soft + 1 s) kills with SIGKILL, which needs at least that much wall time
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and wall >= cfg.cpu_seconds + 1):
        return f"time limit exceeded ({cfg.cpu_seconds} s CPU)"
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        return f"memory limit exceeded ({cfg.memory_mb} MB)"
    if (("Resource temporarily unavailable" in tail and "fork" in tail)
            or "can't start new thread" in tail or "Cannot fork" in tail):
        return f"process limit reached ({cfg.max_processes} processes)"
    if sig == signal.SIGXFSZ or "File too large" in tail:
        return f"file size limit exceeded ({cfg.file_size_mb} MB)"
    if "No space left on device" in tail:
        return f"disk limit exceeded ({cfg.disk_mb} MB)"
    if "Operation not permitted" in tail and "socket" in tail:
        return "network access refused (the sandbox has no network)"
    if sig:
        return f"killed by signal {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"killed by signal {sig}"
    if code:
        last = (tail.strip().splitlines() or [""])[-1].strip()
        return f"exit code {code}" + (f": {last[:200]}" if last else "")
    if truncated:
        return f"output truncated ({cfg.output_limit_bytes} bytes per stream)"
    return None


def _memfd(data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start."""
    fd = os.memfd_create("jaxllm-sandbox", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def run_python(code: str, cfg: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run `code` as a Python program in a fresh sandbox; never raises for anything the code does."""
    mode, python, bwrap = _check(cfg)
    uid = -1
    if mode == "setuid":
        uid = _take_uid(cfg.uid_base)
    fds: list[int] = []
    try:
        fds.append(_memfd(code.encode("utf-8", "surrogatepass")))  # the launcher's stdin
        prog = _seccomp_program() if cfg.seccomp else None
        if prog is not None:
            fds.append(_memfd(prog))
        sec_fd = fds[1] if prog is not None else -1
        argv = _bwrap_argv(cfg, bwrap, mode, python, uid, sec_fd)
        kw = {}
        if mode == "userns" and os.geteuid() == 0:
            kw = dict(user=cfg.uid, group=cfg.uid, extra_groups=[])
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=fds[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin"}, cwd="/", start_new_session=True,
                                pass_fds=fds[1:], **kw)
        while fds:
            os.close(fds.pop())
        out, err = _Capture(cfg.output_limit_bytes), _Capture(cfg.output_limit_bytes, _STARTED)
        try:
            status, killed = _pump(proc, {proc.stdout: out, proc.stderr: err},
                                   t0 + cfg.wall_seconds, _flood_bytes(cfg))
        finally:
            if proc.returncode is None:  # only on an unexpected error in _pump: leave nothing behind
                _kill(proc)
            proc.stdout.close()
            proc.stderr.close()
        wall = time.monotonic() - t0
    finally:
        for fd in fds:
            os.close(fd)
        if uid >= 0:
            _give_uid(uid)
    started = err.seen_marker
    code_ = -signal.SIGKILL if status is None else os.waitstatus_to_exitcode(status)
    # bwrap exits with its payload's code: 128 + signal for a killed one
    if code_ > 128 and code_ - 128 in signal.valid_signals():
        code_ = -(code_ - 128)
    truncated = out.truncated or err.truncated
    error = _classify(cfg, code_, wall, killed, err.text(), started, truncated)
    ok = started and not killed and code_ == 0 and (error is None or error.startswith("output truncated"))
    return SandboxResult(ok=ok, stdout=out.text(), stderr=err.text(), error=error, exit_code=code_,
                         wall_time=wall, truncated=truncated)


def check_sandbox(cfg: SandboxConfig = SandboxConfig()) -> None:
    """Run a trivial program once; raise SandboxUnavailable with the reason if that fails.

    Servers call this at start-up so a broken sandbox is reported once, loudly."""
    r = run_python("print(6 * 7)", cfg)
    if not (r.ok and r.stdout.strip() == "42"):
        raise SandboxUnavailable(f"sandbox self-test failed ({cfg.backend} backend): "
                                 f"{r.error or r.stderr.strip()[-300:] or 'no output'}")


def tool_output_text(result: SandboxResult) -> str:
    """What the engine puts between <|output_start|> and <|output_end|>: output, errors, tool error."""
    parts = [result.stdout.rstrip("\n")] if result.stdout else []
    if result.stderr:
        parts.append(result.stderr.rstrip("\n"))
    if result.error:
        parts.append(f"[sandbox: {result.error}]")
    return "\n".join(parts)
