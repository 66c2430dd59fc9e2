"""CPU threading for a registration that shares its machine: call once at an entry point.

Why: torch runs its CPU kernels on an OpenMP team (GNU libgomp in the PyPI wheels). By
default an OpenMP thread that reaches a barrier first *spins* for a while instead of
sleeping. A registration is thousands of short parallel kernels (about 200 per iteration
in 2D), so each barrier has a thread spinning while its partner waits for a core. On a
busy machine the partner is often descheduled, the spinner burns its time slice, and the
run slows far beyond its share of the CPU. Measured on a 2-core machine
(2D IXI slice, 256x256, 142 iterations; other jobs keeping the load at 7-10):

=====================================  =========  ========
torch threads / OpenMP wait policy     wall (s)   CPU (s)
=====================================  =========  ========
2, default (spin)                      210, 235   37, 46
1                                      15, 9.6    1.5, 1.3
2, ``OMP_WAIT_POLICY=PASSIVE``         15, 3.8    1.8, 1.7
2, ``GOMP_SPINCOUNT=10000``            38, 35     9.0, 9.9
=====================================  =========  ========

So the time goes to spin-waiting (CPU time 25-30x the work); with passive waiting the
run takes its share of the CPU, and two threads still use a second core when there is one.

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so :func:`set_wait_policy`
must run before ``import torch``; the command line calls it first when the machine is already
busy (on a quiet machine spinning is faster: waking sleeping threads costs every small kernel
a system call), and the cohort always does (its workers share the machine).
If torch was loaded before (a user who imported torch first), :func:`configure_threads`
cannot change the policy and, on a machine already busy, uses one thread instead.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager

#: A user's own settings win: these are only filled in where unset.
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "PRIORREG_THREADS"

#: More threads than this make a registration slower, not faster, and small images want fewer:
#: one per VOXELS_PER_THREAD voxels. Measured on a 16-core machine (benchmarks/README.md, "On a
#: GPU, and on many CPU cores"): a 2D slice of 20 000 voxels took 0.93 s on 1 thread, 1.25 s on 2, 4.0 s on 16;
#: the MNI volume at 2 mm (900 000 voxels) 10.4 s on 1, 6.1 on 2, 5.4 on 8 and 9.8 on 16. On the 2-core
#: machine, with OpenMP threads spinning at barriers (the default), two threads already won at 56 000
#: voxels (a 2D slice's finest level 0.26 -> 0.17 s; the MNI case's middle level, 116 000 voxels, 0.58 ->
#: 0.45 s), tied at 39 000 and lost at 22 000; with passive waiting (each kernel wakes the other thread by
#: a system call) they lost at 56 000 (0.24 -> 0.59 s), 100 000 and 116 000 (0.56 -> 0.83 s).
MAX_THREADS = 8
VOXELS_PER_THREAD = 50_000  # OpenMP threads spinning
VOXELS_PER_THREAD_PASSIVE = 131_072  # OMP_WAIT_POLICY=PASSIVE


def set_wait_policy() -> bool:
    """Make OpenMP threads sleep at barriers instead of spinning (``OMP_WAIT_POLICY=PASSIVE``).

    Sets the variable only where the user has not; it takes effect only if torch (and with
    it libgomp) is not loaded yet. Returns True when passive waiting is in effect (or will be).
    """
    if WAIT_POLICY_ENV not in os.environ:
        if "torch" in sys.modules:
            return False  # too late: libgomp has read its settings
        os.environ[WAIT_POLICY_ENV] = "PASSIVE"
    return _passive_wait()


def _passive_wait() -> bool:
    """Whether ``$OMP_WAIT_POLICY`` makes OpenMP threads sleep at barriers (else they spin, libgomp's default)."""
    return os.environ.get(WAIT_POLICY_ENV, "").strip().upper() == "PASSIVE"


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 CFS), or None."""
    for quota_file, period_file in (
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ):
        try:
            with open(quota_file) as fh:
                parts = fh.read().split()
            if period_file is None:
                if parts[0] == "max":
                    return None
                quota, period = float(parts[0]), float(parts[1])
            else:
                quota = float(parts[0])
                with open(period_file) as fh:
                    period = float(fh.read().split()[0])
                if quota <= 0:
                    return None
            return quota / period if period > 0 else None
        except (OSError, ValueError, IndexError):
            continue
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (taskset, cpusets), capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _busy(cpus: int) -> bool:
    try:
        return os.getloadavg()[0] >= cpus
    except (AttributeError, OSError):
        return False


def configure_threads(threads: int | None = None) -> dict:
    """Set torch's CPU threads for this process; call once, first thing, at an entry point.

    ``threads``: how many intra-op threads (e.g. a cohort worker's share of the cores). Default:
    ``$PRIORREG_THREADS`` if set, else the CPUs available to the process (:func:`available_cpus`,
    not the machine's core count: a container or ``taskset`` may give it fewer).
    Passive OpenMP waiting is set up where still possible (:func:`set_wait_policy`); where it is
    not (torch was imported first) and the machine is already busy, one thread is used.

    numpy's and scipy's BLAS get one thread (:func:`one_blas_thread` says why).

    Returns what was decided: ``{"threads", "cpus", "passive_wait", "reason"}``.
    """
    cpus = available_cpus()
    passive = set_wait_policy() if _busy(cpus) else _passive_wait()
    reason = "argument"
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        if env:
            if not env.isascii() or not env.isdigit() or int(env) < 1:  # "abc" ran 2 threads, "0" and "-1" one, without a word
                from .errors import PriorRegError  # (this module is loaded on its own too: tests/test_runtime.py)

                raise PriorRegError(f"{THREADS_ENV}={env!r} is not a thread count; give a whole number of at least 1, "
                                    "or unset it (then the available CPUs)")
            threads, reason = int(env), THREADS_ENV
        if threads is None:
            threads, reason = cpus, "available CPUs"
            if not passive and threads > 1 and _busy(cpus):
                threads, reason = 1, "busy machine and spinning OpenMP threads (torch imported before priorreg)"
    threads = max(1, int(threads))
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    elif _omp_threads() and reason != "argument":  # the user's own setting wins
        threads, reason = _omp_threads(), "OMP_NUM_THREADS"
    else:  # torch reads it when it loads (after the argument checks: a refused command never loads it)
        if os.environ.get("OMP_NUM_THREADS", "").strip() and _omp_threads() is None:
            reason += f"; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']!r} is not a thread count, replaced"
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # for the whole process: see one_blas_thread
    return {"threads": threads, "cpus": cpus, "passive_wait": passive, "reason": reason}


def _omp_threads() -> int | None:
    """The first level's thread count of ``$OMP_NUM_THREADS`` ("4,2": nested levels give 4), or None."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return max(1, int(first)) if first.isascii() and first.isdecimal() else None  # ("²" is a digit, not a number)


def threads_for(n_voxels: int, cpus: int | None = None, passive: bool | None = None) -> int:
    """Threads worth using for a registration of ``n_voxels`` voxels on ``cpus`` CPUs, with OpenMP
    threads that sleep at barriers (``passive``; default: as ``$OMP_WAIT_POLICY`` says) or spin."""
    cpus = available_cpus() if cpus is None else cpus
    if passive is None:
        passive = _passive_wait()
    per_thread = VOXELS_PER_THREAD_PASSIVE if passive else VOXELS_PER_THREAD
    return max(1, min(cpus, MAX_THREADS, math.ceil(n_voxels / per_thread)))


_BUSY_AT_FIRST_RUN = []


def _busy_at_first_run() -> bool:
    """Whether the machine was busy when this process's first registration started, decided once (as the
    command line decides at its start): later, the load average counts this process's own earlier runs,
    and a loop of registrations would throttle itself to one thread."""
    if not _BUSY_AT_FIRST_RUN:
        _BUSY_AT_FIRST_RUN.append(_busy(available_cpus()))
    return _BUSY_AT_FIRST_RUN[0]


@contextmanager
def registration_threads(n_voxels: int):
    """torch's CPU threads lowered to :func:`threads_for` ``(n_voxels)`` for the duration (never
    raised), unless the user chose a count with ``$PRIORREG_THREADS``; one thread where OpenMP's threads
    spin on a machine already busy (as :func:`configure_threads` decides for the command line: a
    library user's 2 mm registration took 57 s instead of 5 s beside other jobs). Only in the main
    thread: torch's thread count is process-wide, and a cohort's workers (threads of one process) set
    their own share."""
    import threading

    import torch

    before = torch.get_num_threads()
    chosen = os.environ.get(THREADS_ENV, "").strip() or threading.current_thread() is not threading.main_thread()
    want = before if chosen else 1 if not _passive_wait() and _busy_at_first_run() else min(before, threads_for(n_voxels))
    if want != before:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if want != before:
            torch.set_num_threads(before)


@contextmanager
def one_blas_thread():
    """numpy's and scipy's BLAS (OpenBLAS in their wheels) on one thread for the duration, in the main thread.

    A registration interleaves torch kernels on its OpenMP team with small BLAS calls (a 3 x 3 solve against
    16 384 points, a world-coordinate product), and OpenBLAS keeps its own threads, which spin after each call
    as libgomp's do: on 2 cores the two teams took turns waiting for each other. The MNI 2 mm case's whole
    process took 7.2 s with OpenBLAS on 2 threads and 5.9 s on one (CPU 12.5 -> 8.7 s, the same field bit for
    bit; benchmarks/README.md, "Whole-process speed"); the mirror check alone 1.3 s -> 0.33 s. No BLAS call of a
    registration is large enough to gain from threads. Needs threadpoolctl (a dependency). A cohort's worker
    threads leave the process-wide setting alone: their processes set it once (:func:`configure_threads`)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ----------------------------------------------------------------------------- large temporaries
#: glibc serves an allocation above its mmap threshold (at most 32 MiB on 64-bit) with fresh pages
#: from the kernel, and returns them when it is freed. A 3D field above that size (a 1 mm brain:
#: 3 x 3.7 M voxels x 4 bytes = 44 MB) is allocated and freed many times per iteration, so every
#: temporary is page-faulted and zeroed anew: a third of the CPU time of a 1 mm run was system time.
MMAP_CEILING = 32 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
_MMAPS_DEFAULT = 65536


def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def heap_temporaries(field_bytes: int):
    """Large temporaries reused from the heap for the duration, where glibc would map each afresh.

    Only when a field is above :data:`MMAP_CEILING`, on glibc, in the main thread (the setting is
    process-wide; a cohort's worker threads leave it alone). Inside: no allocation is mmap-ed and
    the heap is not trimmed, so a freed 44 MB block is reused (a 1 mm brain's whole run 47 -> 32 s,
    system time 17 -> 2 s, peak memory +3 %; benchmarks/README.md, "Whole-process speed"). After: mmap
    again, and the freed heap handed back to the kernel (``malloc_trim``).
    Yields whether it acted.

    Any mallopt call ends glibc's dynamic threshold, so afterwards the threshold is fixed where that rule
    leaves a process that has freed large arrays (mmap above MMAP_CEILING, trim above twice that) rather
    than at its start-up 128 KiB, which would map every later tensor above 128 KiB afresh."""
    import threading

    libc = _glibc() if field_bytes > MMAP_CEILING else None
    if libc is None or threading.current_thread() is not threading.main_thread():
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, _MMAPS_DEFAULT)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_CEILING)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_CEILING)
        libc.malloc_trim(0)


def check_device(name: str, func: str):
    """``torch.device(name)`` if it is a CPU or an available CUDA device, else a clear error."""
    import torch

    from .errors import PriorRegError

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise PriorRegError(f"{func}: device must be 'cpu' or 'cuda', got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise PriorRegError(f"{func}: device must be 'cpu' or 'cuda', got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        cpu = "--device cpu" if func.startswith("--") else "device='cpu'"
        raise PriorRegError(f"{func}: device={name!r} was asked but no CUDA device is available; use {cpu}")
    return dev
