"""priorreg.runtime: passive OpenMP waiting set before torch loads, and the thread count."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from priorreg import runtime
from priorreg.errors import PriorRegError

RUNTIME_PY = runtime.__file__


def _python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **env_changes)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120)


# runtime.py loaded on its own (not through priorreg/__init__, which may import torch itself).
LOAD = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("rt", {RUNTIME_PY!r})
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)
"""


def _spincount(stderr):
    if "OPENMP DISPLAY ENVIRONMENT" not in stderr:
        pytest.skip("torch's OpenMP runtime is not GNU libgomp (nothing to check)")
    line = [ln for ln in stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    return line[0].split("=")[1].strip().strip("'")


def test_wait_policy_set_before_torch_makes_openmp_threads_sleep():
    r = _python(LOAD + "print(rt.set_wait_policy())\nimport torch\ntorch.ones(10**6).sum()\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True"]
    assert _spincount(r.stderr) == "0"  # libgomp's PASSIVE: no spinning at all
    r = _python("import torch\n")  # libgomp's own default: spins 300000 times per wait
    assert _spincount(r.stderr) != "0"


def test_wait_policy_respects_the_user_and_knows_when_it_is_too_late():
    r = _python(LOAD + "print(rt.set_wait_policy())\nimport torch\n", OMP_WAIT_POLICY="ACTIVE")
    assert r.stdout.split() == ["False"] and _spincount(r.stderr) != "0"
    r = _python("import os, torch\n" + LOAD + "print(rt.set_wait_policy(), 'OMP_WAIT_POLICY' in os.environ)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_threads_follow_the_cpus_the_process_may_use(restore_threads):
    mp = restore_threads
    mp.setenv("OMP_WAIT_POLICY", "PASSIVE")
    mp.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    mp.setattr(runtime, "_cgroup_cpus", lambda: None)
    assert runtime.available_cpus() == 4
    mp.setattr(runtime, "_cgroup_cpus", lambda: 1.5)  # a container's CPU quota caps it
    assert runtime.available_cpus() == 2
    mp.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    info = runtime.configure_threads()
    assert info["threads"] == 1 == torch.get_num_threads() and info["cpus"] == 1 and info["passive_wait"]
    assert runtime.configure_threads(2)["threads"] == 2 == torch.get_num_threads()
    mp.setenv(runtime.THREADS_ENV, "2")
    assert runtime.configure_threads()["threads"] == 2
    for bad in ("abc", "0", "-1", "2.5", "\u00b2"):  # "abc" ran 2 threads and "0" one, without a word
        mp.setenv(runtime.THREADS_ENV, bad)
        with pytest.raises(PriorRegError, match=f"PRIORREG_THREADS='{re.escape(bad)}' is not a thread count"):
            runtime.configure_threads()


def test_busy_machine_with_spinning_threads_gets_one_thread(restore_threads):
    """torch imported before priorreg (policy can no longer change) on a busy machine: one thread."""
    mp = restore_threads
    mp.delenv("OMP_WAIT_POLICY", raising=False)  # torch is loaded in this process: too late to set it
    mp.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    mp.setattr(runtime, "_cgroup_cpus", lambda: None)
    mp.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    info = runtime.configure_threads()
    assert info["threads"] == 1 and not info["passive_wait"] and "busy" in info["reason"]
    assert "OMP_WAIT_POLICY" not in os.environ
    mp.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert runtime.configure_threads()["threads"] == 2


def test_small_images_get_fewer_threads_and_none_get_more_than_eight():
    assert runtime.threads_for(20_000, cpus=16) == 1  # a 2D slice
    assert runtime.threads_for(40_000, cpus=16, passive=False) == 1  # the demo slice
    assert runtime.threads_for(116_000, cpus=16, passive=False) == 3  # the MNI case's middle level
    assert runtime.threads_for(116_000, cpus=16, passive=True) == 1  # a sleeping thread costs each kernel a wake-up
    assert runtime.threads_for(300_000, cpus=16, passive=False) == 6
    assert runtime.threads_for(300_000, cpus=16, passive=True) == 3
    assert runtime.threads_for(900_000, cpus=16, passive=False) == 8  # MNI at 2 mm
    assert runtime.threads_for(900_000, cpus=16, passive=True) == 7
    assert runtime.threads_for(7_000_000, cpus=16) == runtime.MAX_THREADS == 8  # 1 mm
    assert runtime.threads_for(7_000_000, cpus=2) == 2


def test_registration_threads_lower_for_the_run_and_restore(restore_threads, monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 16)
    torch.set_num_threads(4)
    with runtime.registration_threads(20_000) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4
    with runtime.registration_threads(10_000_000) as n:  # never raised above what the process had
        assert n == 4 and torch.get_num_threads() == 4
    monkeypatch.setenv(runtime.THREADS_ENV, "4")  # the user's count wins
    with runtime.registration_threads(20_000) as n:
        assert n == 4 and torch.get_num_threads() == 4


def test_a_library_run_on_a_busy_machine_with_spinning_threads_uses_one(restore_threads, monkeypatch):
    """The command line decides this in configure_threads; register() from Python did not (57 s instead of 5 s
    for a 2 mm pair beside other jobs)."""
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 16)
    monkeypatch.setattr(runtime, "_busy", lambda cpus: True)
    monkeypatch.setattr(runtime, "_BUSY_AT_FIRST_RUN", [])  # decided at the process's first registration
    torch.set_num_threads(4)
    monkeypatch.delenv(runtime.WAIT_POLICY_ENV, raising=False)  # libgomp's default: spin
    with runtime.registration_threads(10_000_000) as n:
        assert n == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(runtime.WAIT_POLICY_ENV, "passive")  # threads that sleep share a busy machine well
    with runtime.registration_threads(10_000_000) as n:
        assert n == 4
    assert torch.get_num_threads() == 4
    # Decided once: later the load average counts this process's own runs, which must not throttle a loop.
    monkeypatch.delenv(runtime.WAIT_POLICY_ENV, raising=False)
    monkeypatch.setattr(runtime, "_BUSY_AT_FIRST_RUN", [])
    monkeypatch.setattr(runtime, "_busy", lambda cpus: False)
    with runtime.registration_threads(10_000_000) as n:
        assert n == 4
    monkeypatch.setattr(runtime, "_busy", lambda cpus: True)  # busy now, with this process's own threads
    with runtime.registration_threads(10_000_000) as n:
        assert n == 4


def test_a_registration_records_the_threads_it_ran_on(restore_threads, monkeypatch):
    import numpy as np

    import priorreg

    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    torch.set_num_threads(2)
    f = np.zeros((32, 32))
    f[8:24, 8:24] = 1
    r = priorreg.register(f, 1 - f, levels=1, max_iterations=3, linear="none")
    assert r.threads == 1 and torch.get_num_threads() == 2


MALLINFO = """
import ctypes, threading
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped_by(nbytes):
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(nbytes)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(p)
    return grew
"""


@pytest.mark.skipif(runtime._glibc() is None, reason="glibc's allocator only")
def test_large_temporaries_come_from_the_heap_only_inside_a_large_registration():
    body = """
    big = 64 * 2**20
    print(mapped_by(big) >= big)  # glibc maps it afresh
    with rt.heap_temporaries(big) as acted:
        print(acted, mapped_by(big) == 0)
    print(mapped_by(big) >= big, mapped_by(16 * 2**20) == 0)  # mmap again above the ceiling, the heap below
    with rt.heap_temporaries(rt.MMAP_CEILING // 2) as acted:  # a field below the ceiling: nothing changes
        print(acted, mapped_by(big) >= big)
    def worker():
        with rt.heap_temporaries(big) as acted:
            print(acted)
    t = threading.Thread(target=worker); t.start(); t.join()
    """
    out = _python(LOAD + MALLINFO + textwrap.dedent(body))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "True", "True", "False", "True", "False"]


def test_a_registration_asks_for_heap_temporaries_by_its_field_size_and_is_unchanged_by_them(monkeypatch):
    import numpy as np

    import priorreg
    from priorreg import api

    f = np.zeros((40, 40))
    f[10:30, 8:28] = 1
    m = np.roll(1 - f, 2, axis=0)
    run = lambda: priorreg.register(f, m, levels=2, max_iterations=10, linear="none", warn=False).field
    plain = run()
    asked = []

    def spy(field_bytes):
        asked.append(field_bytes)
        return runtime.heap_temporaries(field_bytes)

    monkeypatch.setattr(api, "heap_temporaries", spy)
    monkeypatch.setattr(runtime, "MMAP_CEILING", 0)  # every field counts as large
    np.testing.assert_array_equal(run(), plain)
    assert asked == [2 * 40 * 40 * 4]  # two float32 components


@pytest.mark.parametrize("value, threads, reason", [("4,2", 4, "OMP_NUM_THREADS"), ("abc", None, "'abc' is not a thread count"),
                                                    ("²", None, "'²' is not a thread count")])
def test_an_omp_thread_setting_of_any_form_is_read_or_replaced(value, threads, reason):
    """"4,2" (nested levels, valid OpenMP) and "abc" were a ValueError traceback from every command."""
    code = "import sys; from priorreg import runtime; assert 'torch' not in sys.modules; print(runtime.configure_threads())"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": value, "PYTHONIOENCODING": "utf-8"},
                       capture_output=True, encoding="utf-8", timeout=60)
    assert r.returncode == 0, r.stderr
    info = eval(r.stdout)
    assert reason in info["reason"] and (threads is None or info["threads"] == threads)


def test_a_thread_count_given_keeps_a_valid_omp_setting_unblamed():
    code = "from priorreg import runtime; print(runtime.configure_threads(2))"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "not a thread count" not in r.stdout, r.stdout + r.stderr


def test_a_registration_runs_numpys_blas_on_one_thread_and_restores_it():
    """OpenBLAS's threads spin after each small call while torch's OpenMP team waits (the MNI 2 mm case's whole
    process 7.2 -> 5.9 s on 2 cores with one BLAS thread): register() holds BLAS at one thread, and gives the
    caller's setting back."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import priorreg

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    seen = []
    f = np.zeros((32, 32))
    f[8:24, 8:24] = 1
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != {2}:
            pytest.skip("no BLAS library that threadpoolctl can set to 2 threads")
        priorreg.register(f, 1 - f, levels=1, linear="none", warn=False, callback=lambda *a: seen.append(blas_threads()))
        assert seen and all(s == {1} for s in seen)
        assert blas_threads() == {2}
