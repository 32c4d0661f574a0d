"""What the operating system refuses, said so that the person on call knows what to
change: the limit a process ran into (``limit_advice``), how near it is to the limit
on open files (``open_files_ratio``), who else could change a file the server trusts
(``others_may_write``), and folders made for the server's user (``make_folders``).
Shared by the loader, the server and the command line."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
from pathlib import Path

from shixin_check.domain.errors import ConfigurationError


def limit_advice(exc: BaseException) -> str:
    """What to raise when ``exc`` is the process running into a limit of the system's
    (open files, processes, memory, file size), else "". For lines that would otherwise
    say only ``[Errno 24] Too many open files``."""
    if isinstance(exc, MemoryError):
        return ("the process ran out of memory: raise its memory limit (ulimit -v, "
                "MemoryMax= under systemd, the container's limit) or give it less to hold")  # fmt: skip
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return ("no thread could be started: raise the limit on processes and threads "
                "(ulimit -u, TasksMax= under systemd, the container's pids limit) or on "
                "memory (ulimit -v)")  # fmt: skip
    number = getattr(exc, "errno", None)
    if number == errno.EMFILE:
        return ("the process's limit on open files is reached: raise it (ulimit -n, "
                "LimitNOFILE= under systemd, --ulimit nofile= for docker); every client "
                "connection holds one")  # fmt: skip
    if number == errno.ENFILE:
        return "the system's limit on open files is reached: raise fs.file-max (sysctl)"
    if number == errno.EAGAIN:  # fork's and pthread_create's word for it
        return ("no process or thread could be started: raise the limit on processes "
                "(ulimit -u, TasksMax= under systemd, the container's pids limit)")  # fmt: skip
    if number == errno.ENOMEM:
        return "the system is out of memory: free some, or raise the process's limit"
    if number == errno.EFBIG:
        return "the process's file-size limit is reached (ulimit -f, LimitFSIZE=): lift it"
    if number in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (or the inodes, or the quota): free space"
    return ""


def errno_words(exc: OSError) -> str:
    """``EFBIG (File too large)``: the errno's name and its text, without a traceback."""
    number = exc.errno
    if number is None:
        return str(exc)
    return f"{errno.errorcode.get(number, f'errno {number}')} ({os.strerror(number)})"


def cannot_write(option: str, path: Path | str, exc: OSError) -> ConfigurationError:
    """A command's output at ``path`` (given by ``option``) that could not be written,
    as one line naming both: ``--out PATH: cannot be written: ENOSPC (No space left on
    device): the disk is full ...`` (the bare error names no file, or a temporary one)."""
    advice = limit_advice(exc)
    return ConfigurationError(f"{option} {path}: cannot be written: "
                              f"{errno_words(exc)}{f': {advice}' if advice else ''}")  # fmt: skip


def open_files_ratio() -> float | None:
    """This process's open file descriptors over its soft limit on them (``ulimit -n``):
    at 1, every new client connection and log file fails with EMFILE. None where it
    cannot be read (no ``/proc``) or there is no limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    try:
        # Linux 6.2 and later: the count, without a descriptor or a list of names
        # (10,000 connections took 12 ms of listing, under the GIL, once a second)
        held = os.stat("/proc/self/fd").st_size
        if held <= 0:  # an older kernel says 0: list them, less the one listing them
            held = len(os.listdir("/proc/self/fd")) - 1
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # at the limit: none left to list
            return 1.0
        return None
    return held / soft


#: A folder the server makes for what it alone writes (logs, a compiled index): at most
#: this (the umask may take more away)
FOLDER_MODE = 0o750


def owned_here(uid: int) -> bool:
    """Whether ``uid`` is this server's user, or root (the administrator)."""
    return uid in (os.geteuid(), 0)


def others_may_write(st: os.stat_result) -> str:
    """Why someone other than this server's user could change the file or folder of
    ``st`` (its group or everyone may write it, or another user owns it; root aside),
    or "". The checksums of a compiled folder catch damage, not a forger, who can
    write ``meta.json`` again too: its modes are what keep the index as compiled."""
    mode = stat.S_IMODE(st.st_mode)
    if not owned_here(st.st_uid):
        return f"owned by another user (uid {st.st_uid}, this server runs as {os.geteuid()})"
    if mode & 0o022:
        return f"writable by {'everyone' if mode & 0o002 else 'its group'} (mode {mode:04o})"
    return ""


def exit_words(exitcode: int | None) -> str:
    """How a child process ended, from its exit code (negative: the signal that killed
    it): ``exited with status 3``, ``killed by SIGKILL``, ``still running``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def make_it_ours(unsafe: str, path: str | Path, mode: str = "600") -> str:
    """The fix for a file ``others_may_write`` says ``unsafe`` of: ``chmod`` cannot give
    away another user's file, so one owned by another user is handed over first."""
    if unsafe.startswith("owned by"):
        return (f"chown {os.geteuid()} {path} (this server's user, or root) and chmod "
                f"{mode} {path}")  # fmt: skip
    return f"chmod {mode} {path}"


def make_folders(folder: Path, mode: int = FOLDER_MODE) -> None:
    """``folder`` and each missing folder above it, each made ``mode`` at most (the umask
    may take more away): ``mkdir -p`` gives only the last the mode asked for, the others
    0777 less the umask. Stops at the first name that exists, as ``mkdir -p``: a file
    where a folder goes above is ENOTDIR, one where ``folder`` goes EEXIST."""
    missing = []
    above = folder
    while not os.path.lexists(above) and above.parent != above:
        missing.append(above)
        above = above.parent
    if not missing and not folder.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(folder))
    for one in reversed(missing):
        try:
            one.mkdir(mode=mode)
        except FileExistsError:  # made meanwhile (another worker): a folder will do
            if not one.is_dir():
                raise
