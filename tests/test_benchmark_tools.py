"""The benchmark's own bookkeeping (benchmarks/run.py, seeds.py): settings per kind of case, the
--set parser and the held-out-seed summary. No registration runs here."""
import copy
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def bench(monkeypatch):
    # run.py pins the thread variables for its children at import: keep them out of this process.
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
              "PRIORREG_BENCH_SET"):
        monkeypatch.setenv(k, os.environ.get(k, "")) if k in os.environ else monkeypatch.delenv(k, raising=False)
    monkeypatch.syspath_prepend(BENCH)
    import run
    import seeds

    saved = copy.deepcopy(run.PRIORREG_SETTINGS)
    yield run, seeds
    run.PRIORREG_SETTINGS.clear()
    run.PRIORREG_SETTINGS.update(saved)


def test_phantom_pyramid_scales_with_the_image(bench):
    run, _ = bench
    import cases

    s256 = run._setting(cases.phantom(256, "close"))
    s512 = run._setting(cases.phantom(512, "close"))
    assert (s256["levels"], s512["levels"]) == (3, 4)
    # the phantom's pixels are 1 mm at both sizes: the bending rule gives the same weight
    from priorreg.deformable import bending_weight
    from priorreg.options import RegistrationOptions

    w = [bending_weight(RegistrationOptions(**s), (1.0, 1.0), (n, n)) for s, n in ((s256, 256), (s512, 512))]
    assert w[0] == w[1] == run.BENDING_PER_VOXEL2
    assert s256["linear"] == "none"  # the paper's experiment starts from its designed layout


def test_functional_pairs_keep_global_mi(bench):
    run, _ = bench
    base = {"kind": "2d-brain", "fixed": np.zeros((8, 8)), "spacing": (2.0, 2.0)}
    func = dict(base, kind="sim-functional")
    assert run._setting(base)["local_weight"] == run.PRIORREG_SETTINGS["2d"]["local_weight"] > 0
    assert run._setting(func)["local_weight"] == 0.0
    from priorreg.deformable import bending_weight
    from priorreg.options import RegistrationOptions

    opts = RegistrationOptions(**run._setting(base))  # the preset's per-voxel rule: 100 mm^2 x (2 mm)^2
    assert bending_weight(opts, base["spacing"], (256, 256)) == pytest.approx(run.BENDING_PER_VOXEL2 * 4.0)


def test_set_changes_settings_and_refuses_bad_items(bench):
    run, _ = bench
    run.apply_sets(["2d.levels=4", "3d.force=warped"], error=pytest.fail)
    assert run.PRIORREG_SETTINGS["2d"]["levels"] == 4 and run.PRIORREG_SETTINGS["3d"]["force"] == "warped"
    errors = []
    run.apply_sets(["levels=4"], error=errors.append)
    run.apply_sets(["4d.levels=4"], error=errors.append)
    assert len(errors) == 2


def test_busy_cores_is_a_fraction_of_the_machine(bench):
    run, _ = bench
    busy = run.busy_cores(0.2)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_seed_summary_counts_wins_per_draw(bench):
    _, seeds = bench
    r = lambda seed, e: dict(seed=seed, epe_mean=e, epe_p95=2 * e, fold_pct=0.0, seconds=1.0)  # noqa: E731
    results = {"g": {"priorreg": [r(1, 0.5), r(2, 0.9), r(3, 0.4)], "peer": [r(1, 0.6), r(2, 0.7), r(3, 0.45)]}}
    lines = seeds.summarise(results, ["g"], ["priorreg", "peer"])
    peer_rows = [ln for ln in lines if ln.startswith("| peer |")]
    assert len(peer_rows) == 2  # per generator and over all generators
    assert all(ln.rstrip(" |").endswith("2/3") for ln in peer_rows)  # won draws 1 and 3, lost draw 2
    assert "| priorreg | 0.600 (0.216) |" in "\n".join(lines)
    assert seeds.parse_seeds("300-302") == [300, 301, 302] and seeds.parse_seeds("7") == [7]


@pytest.fixture(autouse=True, scope="module")
def _forget_bench_modules():
    yield
    for name in ("run", "seeds", "cases", "cases_more", "peers"):
        sys.modules.pop(name, None)


def test_headline_rows_use_only_cross_subject_priors(bench):
    _, seeds = bench
    peers = ["elastix-bspline", "simpleitk-bspline", "convexadam", "niftyreg-f3d"]
    # a generator whose only prior is the test anatomy itself gets no prior row
    assert seeds.methods_for("brainweb-t1-pd", True, False, peers) == ["priorreg", "elastix-bspline",
                                                                      "simpleitk-bspline", "niftyreg-f3d"]
    assert seeds.methods_for("mni3d-2mm-t2", True, False, peers) == ["priorreg", "elastix-bspline", "convexadam",
                                                                    "niftyreg-f3d"]
    # another patient's prior: the default with it (alpha "auto") is a row
    assert seeds.methods_for("brats3d-2mm-flair-t1c", True, False, peers)[:2] == ["priorreg", "priorreg default + prior"]
    assert seeds.PRIORREG_ROWS["priorreg default + prior"][0] == "auto"
    # without --headline: the alpha = 0.4 rows, as before
    assert seeds.methods_for("mni-axial-t2", False, False, [])[1:] == ["priorreg alpha=0.4", "priorreg alpha=0.4 cKL"]
    assert seeds.CROSS_SUBJECT_PRIOR <= set(seeds.ALL_GENERATORS)
