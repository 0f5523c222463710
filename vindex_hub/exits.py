"""How a CLI run ends when the world gets in the way: OS errors, Ctrl-C, a closed stdout.

* ``describe_os_error``: an ``OSError`` (ours, pyarrow's) or a library error that wraps one
  (safetensors' ``IoError(Os { code: 28, .. })``) as one line naming the file, with the hint that
  matters: a full disk says to free space and rerun the same command (a build resumes; every
  published file is written atomically, so nothing half-written is left under its final name);
  a read-only or forbidden folder says which one to change (the output folder, or ``HF_HOME``
  when it is the Hub cache); a file that vanished or appeared meanwhile says another process is
  using the folder.
* ``interrupt_watchdog``: Ctrl-C raises ``KeyboardInterrupt`` as usual, so ``finally`` blocks
  clean up (shared memory unlinked, worker processes stopped, temporary files removed); if the
  process is still alive ``GRACE_S`` later (a thread stuck in a stalled upload, a BLAS call that
  does not return to Python), it prints the one ``interrupted`` line and ends at once. The signal
  reaches the watchdog through ``signal.set_wakeup_fd``, written by the C-level handler, so it
  works even while the main thread is busy in C code. A second Ctrl-C ends at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from .safetext import printable

GRACE_S = 1.0  # how long Ctrl-C waits for cleanup before the process ends regardless
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command
BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE, what a command killed by a closed pipe reports

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
RACE = (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ESTALE)
# How libraries that do not raise OSError spell a full disk in their messages (safetensors'
# Rust io::Error, pyarrow's "IOError: ... No space left on device").
_DISK_FULL_TEXT = re.compile(
    r"No space left on device|StorageFull|Disk quota exceeded|(code: |os error )(28|122)\b"
)
DISK_FULL_HINT = "the disk is full: free space, then rerun the same command to resume"


def os_errno(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``: its own, its cause's, or one its message spells."""
    for e in (exc, exc.__cause__):
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
    if _DISK_FULL_TEXT.search(str(exc)):
        return errno.ENOSPC
    return None


def _is_cache(path: str) -> bool:
    """Whether ``path`` lies in the Hub client's home or cache (``HF_HOME``, ``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    try:
        where = Path(path).resolve()
        return any(
            where.is_relative_to(Path(root).resolve())
            for root in (constants.HF_HOME, constants.HF_HUB_CACHE)
        )
    except (OSError, ValueError):
        return False


def describe_os_error(exc: BaseException) -> str | None:
    """One line for an OS-level failure (see the module doc), or None when ``exc`` is not one."""
    number = os_errno(exc)
    if number is None:
        return None
    filename = getattr(exc, "filename", None)
    where = f"{filename}: " if filename else ""
    reason = os.strerror(number)
    if number in DISK_FULL:
        return f"{where}{reason}; {DISK_FULL_HINT}"
    if number == errno.EFBIG:
        return f"{where}{reason} (a file-size limit, ulimit -f?); raise it, then rerun the same command to resume"
    if number in READ_ONLY:
        if filename and _is_cache(str(filename)):
            return (
                f"{where}{reason}: the Hub cache is not writable; set HF_HOME to a writable folder"
            )
        return f"{where}{reason}: choose a writable folder (or fix its permissions) and rerun"
    if number in RACE:
        return (
            f"{where}{reason}: another process changed this folder meanwhile; "
            "let it finish, then rerun the same command"
        )
    return f"{where}{reason}"


def with_disk_full_hint(message: str, exc: BaseException) -> str:
    """``message`` (a library error's) with the disk-full hint where ``exc`` came from a full
    disk it only reports as text (hf_xet's "No space left on device (os error 28)", say)."""
    if os_errno(exc) in DISK_FULL and DISK_FULL_HINT not in message:
        return f"{message}; {DISK_FULL_HINT}"
    return message


@contextlib.contextmanager
def quiet_hub_client() -> Iterator[None]:
    """The hub client's own log lines and warnings (a download resumed, a retry, "not enough
    free disk space") off for a CLI run, so its report stays one line; an explicit
    ``HF_HUB_VERBOSITY`` (e.g. ``warning``) keeps them."""
    if "HF_HUB_VERBOSITY" in os.environ:
        yield
        return
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    # Read when huggingface_hub is imported (here, or in a process this run starts).
    os.environ["HF_HUB_VERBOSITY"] = "error"
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="huggingface_hub")
            yield
    finally:
        logger.setLevel(level)
        os.environ.pop("HF_HUB_VERBOSITY", None)


@contextlib.contextmanager
def interrupt_watchdog(command: str, *, grace_s: float = GRACE_S) -> Iterator[None]:
    """Ctrl-C ends the run within ``grace_s`` (see the module doc); the ``interrupted`` line is
    printed once a run, by ``report_interrupt``."""
    global _reported
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _reported = threading.Lock()  # a new run (main() called again in one process) reports anew
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter
        os.close(read_fd)
        os.close(write_fd)
        yield
        return

    def watch() -> None:
        try:
            while True:
                byte = os.read(read_fd, 1)
                if not byte:  # the run ended without Ctrl-C
                    os.close(read_fd)
                    return
                if byte[0] == signal.SIGINT:
                    break
        except OSError:
            return
        pressed_again = threading.Event()

        def second_press() -> None:
            # A byte is another signal; EOF only means the run is over (its exit is still
            # guarded by the countdown).
            with contextlib.suppress(OSError):
                while byte := os.read(read_fd, 1):
                    if byte[0] == signal.SIGINT:
                        pressed_again.set()
                        return

        # A second Ctrl-C (or the grace period over) ends the process now.
        threading.Thread(target=second_press, daemon=True).start()
        pressed_again.wait(grace_s)
        report_interrupt(command)
        os._exit(INTERRUPTED_STATUS)

    threading.Thread(target=watch, name="vindex-interrupt-watchdog", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watchdog's read sees EOF, closes read_fd and returns
        # (a watchdog counting down keeps read_fd: it ends the process anyway)


_reported = threading.Lock()


# Commands that keep what they finished: the same command picks up where it stopped.
RESUMABLE = ("build", "pull", "push")


def _resume_hint(command: str) -> str:
    return "; run the same command again to resume where it stopped" if command in RESUMABLE else ""


def report_interrupt(command: str) -> None:
    """Print the one ``interrupted`` line (once a run, whoever gets here first: the command's
    own handler or the watchdog)."""
    if _reported.acquire(blocking=False):
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            print(
                f"vindex-hub {command}: interrupted{_resume_hint(command)}",
                file=sys.stderr,
                flush=True,
            )


def quiet_broken_pipe() -> None:
    """stdout's reader went away (``... | head -1``): send what is left to /dev/null, so the
    interpreter's last flush does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def error_line(command: str, message: object) -> str:
    return f"vindex-hub {command}: error: {printable(message)}"
