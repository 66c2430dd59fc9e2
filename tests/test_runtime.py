"""priorreg.runtime: passive OpenMP waiting set before torch loads, and the thread count."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from priorreg import runtime

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
    assert runtime.threads_for(300_000, cpus=16) == 3
    assert runtime.threads_for(900_000, cpus=16) == 7  # MNI at 2 mm
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


def test_a_registration_records_the_threads_it_ran_on(restore_threads, monkeypatch):
    import numpy as np

    import priorreg

    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    torch.set_num_threads(2)
    f = np.zeros((32, 32))
    f[8:24, 8:24] = 1
    r = priorreg.register(f, 1 - f, levels=1, max_iterations=3, linear="none")
    assert r.threads == 1 and torch.get_num_threads() == 2
