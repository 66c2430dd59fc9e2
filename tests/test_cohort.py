"""priorreg cohort: a CSV manifest of pairs registered on a dask.distributed LocalCluster."""
import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("distributed", reason="priorreg cohort needs dask[distributed]")

import priorreg  # noqa: E402
import synthetic  # noqa: E402
from priorreg import cli, cohort  # noqa: E402
from priorreg import io as pio  # noqa: E402

FAST = ["--levels", "2", "--max-iterations", "6", "--bins", "32"]
KW = dict(levels=2, max_iterations=6, bins=32)
# One in-process worker thread: quick to start, and the pairs run one after the other.
LOCAL = ["--workers", "1", "--threads-per-worker", "1", "--no-processes"]
GEO = dict(spacing=(1.2, 0.9), origin=(5.0, -2.0))


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, argv, *match):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("priorreg: error: "), err
    for m in match:
        assert m in lines[0], (m, lines[0])
    return lines[0]


def write_manifest(path, rows, header=("id", "fixed", "moving", "mask")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_summary(out):
    with open(out / "cohort.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    return rows, json.loads((out / "cohort.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three small 2D T1/T2 pairs (48x40) under root/data, a mask and a learned prior."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "data").mkdir()
    for i in range(3):
        f, m, _, lab = synthetic.case((48, 40), synthetic.T2_MONO, max_disp=2.0, seed=i)
        pio.write_image(priorreg.Image(f.astype(np.float32), **GEO), root / "data" / f"t1_{i}.nii.gz")
        pio.write_image(priorreg.Image(m.astype(np.float32), **GEO), root / "data" / f"t2_{i}.nii.gz")
        if i == 1:
            pio.write_image(priorreg.Image((lab > 0).astype(np.uint8), **GEO), root / "data" / "mask_1.nii.gz")
    lab = synthetic.anatomy((48, 40), seed=5)
    prior = priorreg.fit_prior([synthetic.contrast(lab, synthetic.T1, seed=3)],
                               [synthetic.contrast(lab, synthetic.T2_MONO, seed=4)], bins=32, levels=2)
    prior.save(root / "prior.npz")
    return root


def pairs_manifest(root, name="manifest.csv"):
    rows = [(f"s{i}", f"data/t1_{i}.nii.gz", f"data/t2_{i}.nii.gz", "data/mask_1.nii.gz" if i == 1 else "")
            for i in range(3)]
    return write_manifest(root / name, rows)


def test_cohort_writes_every_pair_like_register(capsys, data, tmp_path):
    manifest = pairs_manifest(data)
    out = tmp_path / "cohort"
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--prior", data / "prior.npz", "--alpha", "0.4",
                      *FAST, *LOCAL)
    assert rc == 0, err
    assert len(so.strip().splitlines()) == 1 and "3 registered, 0 failed" in so
    assert "cohort 3/3" in err and "ETA" in err and "Traceback" not in err
    assert sorted(os.listdir(out)) == ["cohort.csv", "cohort.json", "s0", "s1", "s2"]
    rows, summary = read_summary(out)
    assert summary["counts"] == {"ok": 3, "failed": 0, "skipped": 0, "not run": 0, "total": 3}
    assert summary["options"]["2D"]["alpha"] == 0.4 and summary["options"]["2D"]["bins"] == 32
    assert summary["preset"] == "default" and summary["overrides"]["alpha"] == 0.4
    prior = priorreg.Prior.load(data / "prior.npz")
    for i in range(3):
        sub = out / f"s{i}"
        assert sorted(os.listdir(sub)) == sorted(cli.OUTPUT_NAMES + (cli.LINEAR_NAME,))
        fixed = pio.read_image(data / "data" / f"t1_{i}.nii.gz")
        moving = pio.read_image(data / "data" / f"t2_{i}.nii.gz")
        mask = pio.read_image(data / "data" / "mask_1.nii.gz").array > 0 if i == 1 else None
        direct = priorreg.register(fixed, moving, prior=prior, alpha=0.4, mask=mask, **KW)
        field, grid, _ = pio.read_field(sub / "field.nii.gz")
        assert grid.same_grid(fixed)
        np.testing.assert_allclose(field, direct.field, atol=1e-4)
        np.testing.assert_allclose(pio.read_image(sub / "warped.nii.gz").array, direct.warped.array, atol=1e-3)
        r = rows[f"s{i}"]
        assert r["status"] == "ok" and r["error"] == ""
        assert float(r["final_energy"]) == pytest.approx(direct.final_energy, rel=1e-4, abs=1e-6)
        assert float(r["percent_folding"]) == pytest.approx(direct.jacobian_stats["percent_nonpositive"])
        rep = json.loads((sub / "report.json").read_text())
        assert rep["cohort"]["id"] == f"s{i}" and ("mask" in rep["inputs"]) == (i == 1)
    # A finished cohort is not overwritten unasked.
    one_line_error(capsys, ["cohort", manifest, "--out", out, *FAST, *LOCAL], "not empty", "--resume")


def test_cohort_with_a_prior_chooses_alpha_per_pair_like_register(capsys, data, tmp_path):
    """A prior and no --alpha: every pair gets alpha "auto", chosen per level as register() chooses it."""
    manifest = pairs_manifest(data, "manifest_auto.csv")
    out = tmp_path / "auto"
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--prior", data / "prior.npz", *FAST, *LOCAL)
    assert rc == 0, err
    rows, summary = read_summary(out)
    assert summary["options"]["2D"]["alpha"] == "auto"
    prior = priorreg.Prior.load(data / "prior.npz")
    for i in range(3):
        fixed = pio.read_image(data / "data" / f"t1_{i}.nii.gz")
        moving = pio.read_image(data / "data" / f"t2_{i}.nii.gz")
        mask = pio.read_image(data / "data" / "mask_1.nii.gz").array > 0 if i == 1 else None
        direct = priorreg.register(fixed, moving, prior=prior, mask=mask, warn=False, **KW)
        rep = json.loads((out / f"s{i}" / "report.json").read_text())
        chosen = [w["alpha"] for w in rep["prior_weights"]]
        assert len(chosen) == KW["levels"]
        assert chosen == pytest.approx([w["alpha"] for w in direct.prior_weights], abs=1e-6)
        field = pio.read_field(out / f"s{i}" / "field.nii.gz").field
        np.testing.assert_allclose(field, direct.field, atol=1e-4)


def test_bad_rows_are_refused_before_anything_runs(capsys, data, tmp_path, monkeypatch):
    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started for a bad manifest")

    monkeypatch.setattr(cohort, "_start_client", no_cluster)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    d = data / "data"
    rows = [
        ("a", d / "t1_0.nii.gz", d / "t2_0.nii.gz", ""),
        ("b", d / "t1_1.nii.gz", tmp_path / "missing.nii.gz", ""),  # line 3: missing file
        ("a", d / "t1_2.nii.gz", d / "t2_2.nii.gz", ""),  # line 4: duplicate id
        ("c", tmp_path / "out" / "c" / "warped.nii.gz", d / "t2_2.nii.gz", ""),  # line 5: output is an input
        ("d", d / "t1_2.nii.gz", d / "t2_2.nii.gz", d / "nomask.nii.gz"),  # line 6: missing mask
    ]
    (tmp_path / "out" / "c").mkdir(parents=True)
    pio.write_image(priorreg.Image(np.ones((48, 40), np.float32)), tmp_path / "out" / "c" / "warped.nii.gz")
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    msg = one_line_error(capsys, ["cohort", manifest, "--out", tmp_path / "out", "--overwrite", *LOCAL],
                         "4 bad row(s) of 5", "nothing was run", "line 3: moving: no such file",
                         "line 4: duplicate id 'a' (first on line 2)", "inputs are never written",
                         "line 6: mask: no such file")
    assert "line 2:" not in msg and "line 5:" in msg
    assert sorted(os.listdir(tmp_path / "out")) == ["c"]  # nothing written
    # A 2D image beside a 3D one, or beside a prior of the other dimension: from the headers, before the run
    # (it had failed in the pair's task); a single-slice 3D file is the 2D image it is read as.
    pio.write_image(priorreg.Image(np.ones((8, 8, 8), np.float32)), tmp_path / "vol.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 48, 40), np.float32)), str(tmp_path / "slab.nii.gz"))
    manifest = write_manifest(tmp_path / "dims.csv", [("v", d / "t1_0.nii.gz", tmp_path / "vol.nii.gz", ""),
                                                      ("s", d / "t1_0.nii.gz", tmp_path / "slab.nii.gz", "")])
    msg = one_line_error(capsys, ["cohort", manifest, "--out", tmp_path / "dims", *LOCAL], "1 bad row(s) of 2",
                         "line 2: fixed is 2D and moving is 3D (both must be 2D or both 3D)")
    vols = write_manifest(tmp_path / "vols.csv", [("v", tmp_path / "vol.nii.gz", tmp_path / "vol.nii.gz", "")])
    one_line_error(capsys, ["cohort", vols, "--out", tmp_path / "dims", "--prior", data / "prior.npz", *LOCAL],
                   "line 2: the images are 3D and the prior 2D")
    # An existing output folder of another run, the manifest itself and its columns.
    manifest = write_manifest(tmp_path / "taken.csv", [("taken", d / "t1_0.nii.gz", d / "t2_0.nii.gz", "")])
    one_line_error(capsys, ["cohort", manifest, "--out", tmp_path, "--resume", *LOCAL],  # not a folder of ours
                   f"line 2: output folder {tmp_path / 'taken'} exists and is not empty")
    one_line_error(capsys, ["cohort", manifest, "--out", tmp_path / "new", "--scheduler", "tcp://h:1", "--workers", "2"],
                   "do not apply with --scheduler")
    (tmp_path / "cols.csv").write_text("fixed;moving\na;b\n")
    one_line_error(capsys, ["cohort", tmp_path / "cols.csv", "--out", tmp_path / "new"], "no column(s) fixed, moving",
                   "comma-separated")
    (tmp_path / "bin.csv").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    one_line_error(capsys, ["cohort", tmp_path / "bin.csv", "--out", tmp_path / "new"], "cannot read", "UTF-8")
    one_line_error(capsys, ["cohort", tmp_path / "none.csv", "--out", tmp_path / "new"], "manifest: no such file")
    one_line_error(capsys, ["cohort", manifest, "--out", tmp_path / "new", "--alpha", "0.5"], "needs a learned prior")
    assert not (tmp_path / "new").exists()
    # An id cell left empty takes the row number, as rows do without an id column (it was "empty id" and
    # "output folder ... is the cohort --out folder itself").
    manifest = write_manifest(tmp_path / "ids.csv", [("", d / "t1_0.nii.gz", d / "t2_0.nii.gz", ""),
                                                     ("b", d / "t1_1.nii.gz", d / "t2_1.nii.gz", "")])
    assert [p.id for p in cohort.validate_manifest(manifest, tmp_path / "new")] == ["0001", "b"]
    long = "b" * 260  # an out column the file system cannot take: the pair ran, then failed at its rename
    manifest = write_manifest(tmp_path / "long.csv", [("a", d / "t1_0.nii.gz", d / "t2_0.nii.gz", "", long)],
                              header=("id", "fixed", "moving", "mask", "out"))
    one_line_error(capsys, ["cohort", manifest, "--out", tmp_path / "new", *LOCAL], "line 2: out: the name bbbb",
                   "is 260 bytes long")


def test_failed_pairs_are_reported_the_rest_complete_and_resume(capsys, data, tmp_path, monkeypatch):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")  # exists: passes validation, fails when read
    d = data / "data"
    manifest = write_manifest(tmp_path / "m.csv", [
        ("good0", d / "t1_0.nii.gz", d / "t2_0.nii.gz", ""),
        ("bad", d / "t1_1.nii.gz", broken, ""),
        ("crash", d / "t1_1.nii.gz", d / "t2_1.nii.gz", ""),
        ("good2", d / "t1_2.nii.gz", d / "t2_2.nii.gz", ""),
    ])
    real = cohort.register_pair

    def task(spec, *args):  # a task that raises (as when a worker cannot run it) instead of returning a dict
        if spec["id"] == "crash":
            raise RuntimeError("worker lost")
        return real(spec, *args)

    monkeypatch.setattr(cohort, "register_pair", task)
    out = tmp_path / "out"
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, *FAST, *LOCAL)
    assert rc == 1, err
    assert "2 registered, 2 failed" in so
    assert "pair bad (line 3) failed: moving: cannot read" in err and "pair crash (line 4) failed: RuntimeError: worker lost" in err
    assert err.strip().splitlines()[-1] == f"priorreg: error: 2 of 4 pair(s) failed; see {out / 'cohort.csv'}"
    rows, summary = read_summary(out)
    assert [rows[k]["status"] for k in ("good0", "bad", "crash", "good2")] == ["ok", "failed", "failed", "ok"]
    assert "cannot read" in rows["bad"]["error"] and summary["counts"]["failed"] == 2
    assert sorted(os.listdir(out)) == ["cohort.csv", "cohort.json", "good0", "good2"]
    done = {k: os.stat(out / k / "field.nii.gz").st_mtime_ns for k in ("good0", "good2")}
    first = {k: rows[k]["seconds"] for k in ("good0", "good2")}

    # Fix the broken image and resume: only the failed pairs run again.
    broken.write_bytes((d / "t2_1.nii.gz").read_bytes())
    monkeypatch.setattr(cohort, "register_pair", real)
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--resume", *FAST, *LOCAL)
    assert rc == 0, err
    assert "2 registered, 0 failed, 2 skipped" in so and "2 of 4 pair(s) complete already" in err
    rows, summary = read_summary(out)
    assert [rows[k]["status"] for k in ("good0", "bad", "crash", "good2")] == ["skipped", "ok", "ok", "skipped"]
    assert rows["good0"]["final_energy"] != ""
    assert {k: rows[k]["seconds"] for k in first} == first  # the seconds of the run that made them, not of the skip
    assert [r["seconds"] for r in summary["pairs"] if r["id"] == "good0"] == [pytest.approx(float(first["good0"]), rel=1e-5)]
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--resume", *FAST, *LOCAL)  # all skipped, twice
    assert rc == 0 and "0 registered, 0 failed, 4 skipped" in so, err
    assert {k: read_summary(out)[0][k]["seconds"] for k in first} == first
    assert {k: os.stat(out / k / "field.nii.gz").st_mtime_ns for k in done} == done
    assert all(cohort.outputs_complete(out / k) for k in rows)
    (out / "good0" / "linear.tfm").unlink()  # a file the report lists is missing: the pair is not complete
    assert not cohort.outputs_complete(out / "good0") and cohort.outputs_complete(out / "good2")
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--resume", *FAST, *LOCAL)
    assert rc == 0 and "1 registered, 0 failed, 3 skipped" in so, err
    assert (out / "good0" / "linear.tfm").is_file()
    # A row corrected after the run (another moving image) is registered again, not skipped with the old outputs.
    rewritten = write_manifest(tmp_path / "m2.csv", [
        ("good0", d / "t1_0.nii.gz", d / "t2_2.nii.gz", ""),
        ("bad", d / "t1_1.nii.gz", broken, ""),
        ("crash", d / "t1_1.nii.gz", d / "t2_1.nii.gz", ""),
        ("good2", d / "t1_2.nii.gz", d / "t2_2.nii.gz", ""),
    ])
    rc, so, err = run(capsys, "cohort", rewritten, "--out", out, "--resume", *FAST, *LOCAL)
    assert rc == 0 and "1 registered, 0 failed, 3 skipped" in so, err
    rows, _ = read_summary(out)
    assert rows["good0"]["status"] == "ok"
    report = json.loads((out / "good0" / "report.json").read_text())
    assert report["inputs"]["moving"]["path"] == str(d / "t2_2.nii.gz")
    # The same files through another path (a symlinked folder) are the same inputs: skipped, not run again.
    (tmp_path / "via").symlink_to(d)
    via = write_manifest(tmp_path / "m3.csv", [(k, str(a).replace(str(d), str(tmp_path / "via")), str(b).replace(str(d), str(tmp_path / "via")), "")
                                               for k, a, b in (("good0", d / "t1_0.nii.gz", d / "t2_2.nii.gz"),
                                                               ("bad", d / "t1_1.nii.gz", broken),
                                                               ("crash", d / "t1_1.nii.gz", d / "t2_1.nii.gz"),
                                                               ("good2", d / "t1_2.nii.gz", d / "t2_2.nii.gz"))])
    rc, so, err = run(capsys, "cohort", via, "--out", out, "--resume", *FAST, *LOCAL)
    assert rc == 0 and "0 registered, 0 failed, 4 skipped" in so, err
    # New content at the same path (a scan re-exported): registered again, not skipped with the old outputs.
    broken.write_bytes((d / "t2_2.nii.gz").read_bytes())
    rc, so, err = run(capsys, "cohort", rewritten, "--out", out, "--resume", *FAST, *LOCAL)
    assert rc == 0 and "1 registered, 0 failed, 3 skipped" in so, err
    assert read_summary(out)[0]["bad"]["status"] == "ok"
    # Resuming with other options would record them for pairs that ran without them.
    one_line_error(capsys, ["cohort", manifest, "--out", out, "--resume", "--levels", "3", *LOCAL],
                   "--resume with other options than the run in", "levels, max_iterations differ")
    # Without cohort.json (a run killed before writing it) each skipped pair's report.json says its options.
    (out / "cohort.json").unlink()
    one_line_error(capsys, ["cohort", manifest, "--out", out, "--resume", "--levels", "3", *LOCAL],
                   "--resume with other options than pair bad was registered with (bins, levels, max_iterations differ")
    rc, so, err = run(capsys, "cohort", rewritten, "--out", out, "--resume", *FAST, *LOCAL)  # the same options: skipped
    assert rc == 0 and "0 registered, 0 failed, 4 skipped" in so, err


def test_missing_dask_is_one_line_with_the_pip_command(capsys, data, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # 'import distributed' raises ImportError
    one_line_error(capsys, ["cohort", pairs_manifest(data), "--out", tmp_path / "o"],
                   "needs dask.distributed", 'pip install "dask[distributed]"')
    assert not (tmp_path / "o").exists()


def test_cohort_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["cohort", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: priorreg cohort" in text and "--scheduler" in text and "--max-iterations" in text


def test_progress_line_on_a_tty():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    p = cohort.Progress(3, cli.Console(stream=s))
    p.update(True)
    p.error("pair x (line 3) failed: boom")
    p.update(False)
    p.end()
    text = s.getvalue()
    assert text.count("\r") == 2 and "cohort 1/3: 1 done, 0 failed, 2 remaining" in text and "ETA" in text
    assert "\npriorreg: pair x (line 3) failed: boom\n" in text and text.endswith("\n")
    assert "cohort 2/3: 1 done, 1 failed, 1 remaining" in text
    quiet = Tty()
    cohort.Progress(3, cli.Console(quiet=True, stream=quiet)).update(True)
    assert quiet.getvalue() == ""


def test_a_pairs_warning_lands_in_its_notes_and_report(tmp_path):
    # The dask task itself (no cluster): a prior trained with the modalities swapped runs, and says so.
    f, m, _, _ = synthetic.case((96, 112), synthetic.T2_MONO, max_disp=3.0)
    pio.write_image(priorreg.Image(f.astype(np.float32)), tmp_path / "f.nii.gz")
    pio.write_image(priorreg.Image(m.astype(np.float32)), tmp_path / "m.nii.gz")
    lab = synthetic.anatomy((96, 112), seed=5)
    swapped = priorreg.fit_prior([synthetic.contrast(lab, synthetic.T2_MONO, seed=41)],
                                 [synthetic.contrast(lab, synthetic.T1, seed=40)], bins=32, parzen_sigma=1.0, levels=2)
    spec = {"line": 2, "id": "p1", "fixed": str(tmp_path / "f.nii.gz"), "moving": str(tmp_path / "m.nii.gz"),
            "mask": None, "out": str(tmp_path / "p1"), "prior": "swapped.npz"}
    res = cohort.register_pair(spec, swapped, None, {"alpha": 0.4, "levels": 2, "bins": 32, "parzen_sigma": 1.0,
                                                     "max_iterations": 5})
    assert res["status"] == "ok", res
    assert [n for n in res["notes"] if n.startswith("warning: the prior fits this pair far better")]
    import json

    recorded = json.loads((tmp_path / "p1" / "report.json").read_text())["warnings"]
    assert len([w for w in recorded if w.startswith("the prior fits this pair far better")]) == 1


def test_cohort_preset_and_a_failed_write_leaves_no_partial_folder(capsys, data, tmp_path, monkeypatch):
    from priorreg import report
    from priorreg.options import preset_options

    manifest = pairs_manifest(data)
    real = report.write_html

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_html", disk_full)
    out = tmp_path / "out"
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--preset", "paper", "--quiet", *FAST, *LOCAL)
    assert rc == 1 and "No space left on device" in err
    assert sorted(os.listdir(out)) == ["cohort.csv", "cohort.json"]  # no pair folder, no temporary folder
    monkeypatch.setattr(report, "write_html", real)
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--preset", "paper", "--resume", *FAST, *LOCAL)
    assert rc == 0 and "3 registered" in so, err
    rows, summary = read_summary(out)
    assert summary["preset"] == "paper" and set(summary["options"]) == {"2D", "3D"}
    assert summary["options"]["2D"] == preset_options("paper", 2).replace(levels=2, max_iterations=6, bins=32).as_dict()
    rep = json.loads((out / "s0" / "report.json").read_text())
    assert rep["preset"] == "paper" and rep["options"] == summary["options"]["2D"]


def test_ctrl_c_stops_running_pairs_and_leaves_no_dask_files(capsys, data, tmp_path, monkeypatch):
    """Ctrl-C with pairs on worker threads (--no-processes): the summary said 'not run' while a running pair
    went on and wrote its outputs afterwards, and dask's lock files stayed in /tmp/dask-scratch-space."""
    import tempfile
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp puts the cluster's folder
    real = cohort.Progress.update

    def ctrl_c_after_the_first(self, ok, force=False):
        real(self, ok, force)
        raise KeyboardInterrupt  # as the first pair is recorded: the second is running on the worker thread

    monkeypatch.setattr(cohort.Progress, "update", ctrl_c_after_the_first)
    manifest = pairs_manifest(data)
    out = tmp_path / "out"
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, *FAST, "--max-iterations", "200", *LOCAL)
    assert rc != 0 and err.strip().splitlines()[-1] == "priorreg: error: interrupted", err
    assert "distributed" not in err and "WARNING" not in err  # dask's own log lines stay off the terminal
    rows, summary = read_summary(out)
    assert summary["interrupted"] and [rows[k]["status"] for k in ("s0", "s1", "s2")] == ["ok", "not run", "not run"]
    time.sleep(2.0)  # a pair still running would write now
    assert sorted(os.listdir(out)) == ["cohort.csv", "cohort.json", "s0"]
    assert os.listdir(scratch) == []


def test_ctrl_c_records_a_pair_that_finished_before_it_was_heard(capsys, data, tmp_path, monkeypatch):
    """A pair whose worker process wrote its outputs after Ctrl-C came (the workers run on until the cluster
    closes), or before its result was heard, was recorded "not run" beside its complete folder. The summary
    now reads the folders once the cluster is closed; an earlier run's complete folder is not taken for this
    run's. (Worker processes are too slow to start for a test; a worker thread finishes the same way.)"""
    import time

    real = cohort.Progress.update
    out = tmp_path / "out"

    def ctrl_c_once_the_second_has_written(self, ok, force=False):
        real(self, ok, force)
        for _ in range(600):  # the second pair runs on the worker thread; wait until its folder is complete
            if cohort.outputs_complete(str(out / "s1")):
                break
            time.sleep(0.1)
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort.Progress, "update", ctrl_c_once_the_second_has_written)
    rc, _, err = run(capsys, "cohort", pairs_manifest(data), "--out", out, *FAST, "--max-iterations", "200", *LOCAL)
    assert rc != 0, err
    rows, _ = read_summary(out)
    assert [rows[k]["status"] for k in ("s0", "s1", "s2")] == ["ok", "ok", "not run"]
    s1 = next(p for p in cohort.validate_manifest(pairs_manifest(data), str(out), overwrite=True) if p.id == "s1")
    assert cohort.written_since(s1, time.time() - 600)
    assert not cohort.written_since(s1, time.time())  # written before this "run" began: an earlier run's


def test_resume_reads_a_record_from_before_the_file_stamps_by_path(tmp_path):
    """report.json written before inputs had sizes and times: compared by path alone (an upgrade would
    otherwise register the whole cohort again); with stamps, a changed size counts."""
    f, m = tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"
    f.write_bytes(b"fixed")
    m.write_bytes(b"moving")
    pr = cohort.Pair(line=2, id="a", fixed=str(f), moving=str(m), mask=None, out=str(tmp_path / "a"))
    os.makedirs(pr.out)
    old = {"inputs": {"fixed": {"path": str(f)}, "moving": {"path": str(m)}}}
    (tmp_path / "a" / "report.json").write_text(json.dumps(old))
    assert cohort.same_inputs(pr)
    stamped = {"inputs": {"fixed": cohort.wf.file_stamp(f), "moving": cohort.wf.file_stamp(m)}}
    (tmp_path / "a" / "report.json").write_text(json.dumps(stamped))
    assert cohort.same_inputs(pr)
    m.write_bytes(b"moving, re-exported")
    assert not cohort.same_inputs(pr)



def test_resume_compares_the_prior_as_it_does_the_images(tmp_path):
    """A new user's --resume with another prior (or the same path retrained) kept the pairs made with the old
    one, and cohort.json named only the new one."""
    f, m, p, q = (tmp_path / n for n in ("f.nii.gz", "m.nii.gz", "p.npz", "q.npz"))
    for path in (f, m, p, q):
        path.write_bytes(path.name.encode())
    pr = cohort.Pair(line=2, id="a", fixed=str(f), moving=str(m), mask=None, out=str(tmp_path / "a"), prior=str(p))
    os.makedirs(pr.out)
    stamp = cohort.wf.file_stamp
    rec = {"inputs": {"fixed": stamp(f), "moving": stamp(m), "prior": {**stamp(p), "bins": 32}}}
    (tmp_path / "a" / "report.json").write_text(json.dumps(rec))
    assert cohort.same_inputs(pr)
    assert not cohort.same_inputs(cohort.Pair(**{**pr.__dict__, "prior": str(q)}))  # another prior
    assert not cohort.same_inputs(cohort.Pair(**{**pr.__dict__, "prior": None}))  # none now
    p.write_bytes(b"retrained, another size")
    assert not cohort.same_inputs(pr)


@pytest.mark.slow
def test_ctrl_c_on_a_local_cluster_is_one_line_without_the_workers_tracebacks(tmp_path):
    """Each worker process printed its own KeyboardInterrupt traceback (35 lines) beside priorreg's one."""
    import signal
    import subprocess
    import sys
    import time
    from importlib.resources import files

    brainweb = files("priorreg") / "data" / "brainweb"
    pair = (brainweb / "BrainT1Slice.png", brainweb / "BrainProtonDensitySlice.png")
    write_manifest(tmp_path / "m.csv", [(f"p{k}", *pair, "") for k in range(6)])
    proc = subprocess.Popen([sys.executable, "-m", "priorreg", "cohort", tmp_path / "m.csv", "--out", tmp_path / "o",
                             "--workers", "1"], stderr=subprocess.PIPE, text=True, start_new_session=True)
    with proc.stderr:
        first = proc.stderr.readline()  # "registering 6 pair(s) ...": the cluster is up
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C on a terminal: to every process of the group
        err = first + proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip().endswith("priorreg: error: interrupted"), err
    with open(tmp_path / "o" / "cohort.csv") as fh:
        assert "not run" in fh.read()  # the pairs left are recorded, for --resume


def test_an_empty_out_is_refused_not_taken_as_the_working_directory(capsys, tmp_path):
    write_manifest(tmp_path / "m.csv", [("a", "f.nii.gz", "m.nii.gz", "")])
    one_line_error(capsys, ["cohort", tmp_path / "m.csv", "--out", ""], "--out is empty")


def test_a_skipped_pair_of_an_older_cohort_json_takes_its_preset_from_its_report(tmp_path):
    """Rows written before rows recorded the preset had none, and --resume copied the gap on and on."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps({"preset": "functional"}), encoding="utf-8")
    pr = cohort.Pair(line=2, id="a", fixed="f.nii.gz", moving="m.nii.gz", mask=None, out=str(tmp_path / "a"), skip=True)
    old_row = {"id": "a", "status": "ok", "seconds": 3.0, "final_energy": -1.0, "percent_folding": 0.0, "notes": []}
    assert cohort._skipped_record(pr, {("a", pr.out): old_row})["preset"] == "functional"
    assert cohort._skipped_record(pr, {("a", pr.out): {**old_row, "preset": "paper"}})["preset"] == "paper"


def test_a_spect_pair_runs_functional_in_a_cohort_and_resumes(capsys, data, tmp_path):
    """With no --preset, a pair whose moving file says SPECT runs the functional preset (as register does),
    and --resume compares it with the functional options, not the cohort's default ones."""
    d = data / "data"
    spect = tmp_path / "spect.nii.gz"
    spect.write_bytes((d / "t2_0.nii.gz").read_bytes())
    (tmp_path / "spect.json").write_text('{"Modality": "NM"}', encoding="utf-8")
    manifest = write_manifest(tmp_path / "m.csv", [("mr", d / "t1_0.nii.gz", d / "t2_0.nii.gz", ""),
                                                   ("spect", d / "t1_0.nii.gz", spect, "")])
    out = tmp_path / "out"
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, *FAST, *LOCAL)
    assert rc == 0, err
    presets = {k: json.loads((out / k / "report.json").read_text())["preset"] for k in ("mr", "spect")}
    assert presets == {"mr": "default", "spect": "functional"}
    # cohort.json named "default" for every pair, and the switch was a warning in Python's words
    rows = {r["id"]: r for r in json.loads((out / "cohort.json").read_text())["pairs"]}
    assert {k: rows[k]["preset"] for k in rows} == presets
    assert "preset" in (out / "cohort.csv").read_text().splitlines()[0].split(",")
    spect_report = json.loads((out / "spect" / "report.json").read_text())
    assert "functional" in spect_report["preset_note"] and not any("preset" in w for w in spect_report["warnings"])
    assert "preset='default'" not in json.dumps(rows["spect"]["notes"])
    (out / "cohort.json").unlink()  # each pair's report.json is what --resume compares
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--resume", *FAST, *LOCAL)
    assert rc == 0 and "0 registered, 0 failed, 2 skipped" in so, err
    (out / "cohort.json").unlink()
    one_line_error(capsys, ["cohort", manifest, "--out", out, "--resume", *FAST[:2], "--max-iterations", "5", "--bins", "32",
                            *LOCAL], "--resume with other options than pair mr was registered with (max_iterations differ")


def test_resume_takes_the_levels_a_small_image_was_given(capsys, tmp_path):
    """register() runs fewer levels on an image too small for the preset's; --resume compared the record
    with the preset's levels and refused the cohort it had written."""
    rng = np.random.default_rng(0)
    for name in ("f.nii.gz", "m.nii.gz"):
        pio.write_image(priorreg.Image(rng.random((12, 12, 12)).astype(np.float32)), tmp_path / name)
    manifest = write_manifest(tmp_path / "m.csv", [("a", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "")])
    argv = ["cohort", manifest, "--out", tmp_path / "out", "--max-iterations", "2", *LOCAL]
    rc, so, err = run(capsys, *argv)
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "a" / "report.json").read_text())["options"]["levels"] < 3
    rc, so, err = run(capsys, *argv, "--resume")
    assert rc == 0 and "0 registered, 0 failed, 1 skipped" in so, err


def test_a_skipped_pair_keeps_its_notes(tmp_path):
    """A new user's resumed cohort.json dropped a skipped pair's notes ("the field is small ..."): they come from
    the earlier cohort.json, or else from the pair's report.json warnings."""
    pr = cohort.Pair(line=2, id="a", fixed="f.nii.gz", moving="m.nii.gz", mask=None, out=str(tmp_path / "a"), skip=True)
    before = {("a", pr.out): {"id": "a", "status": "ok", "seconds": 1.5, "final_energy": -0.1, "percent_folding": 0.0,
                              "notes": ["warning: the field is small"]}}
    rec = cohort._skipped_record(pr, before)
    assert rec["notes"] == ["warning: the field is small"] and rec["seconds"] == 1.5
    os.makedirs(pr.out)
    (tmp_path / "a" / "report.json").write_text(json.dumps({"summary": {"seconds": 2.0}, "warnings": ["folds 2%"]}),
                                                encoding="utf-8")
    rec = cohort._skipped_record(pr, {})
    assert rec["notes"] == ["warning: folds 2%"] and rec["seconds"] == 2.0
    row = cohort._summary_row(pr, {"a": rec})
    assert row["notes"] == ["warning: folds 2%"]
    (csv_row,) = csv.DictReader(cohort._csv_text([row, ]).splitlines())
    assert csv_row["notes"] == "warning: folds 2%" and csv_row["seconds"] == "2"


def test_resume_with_the_preset_every_kept_pair_ran(capsys, data, tmp_path):
    """A cohort run without --preset whose pairs all ran functional (their files say SPECT) was refused when
    resumed with --preset functional: the cohort's options differed though no pair's did."""
    d = data / "data"
    rows = []
    for k in range(2):
        spect = tmp_path / f"spect{k}.nii.gz"
        spect.write_bytes((d / f"t2_{k}.nii.gz").read_bytes())
        (tmp_path / f"spect{k}.json").write_text('{"Modality": "NM"}', encoding="utf-8")
        rows.append((f"spect{k}", d / f"t1_{k}.nii.gz", spect, ""))
    out = tmp_path / "out"
    rc, so, err = run(capsys, "cohort", write_manifest(tmp_path / "m.csv", rows[:1]), "--out", out, *FAST, *LOCAL)
    assert rc == 0, err
    manifest = write_manifest(tmp_path / "m2.csv", rows)
    rc, so, err = run(capsys, "cohort", manifest, "--out", out, "--resume", "--preset", "functional", *FAST, *LOCAL)
    assert rc == 0 and "1 registered, 0 failed, 1 skipped" in so, err
    assert json.loads((out / "cohort.json").read_text())["preset"] == "functional"
    # a kept pair that ran other options still refuses the cohort's new ones, with the cohort's message
    one_line_error(capsys, ["cohort", manifest, "--out", out, "--resume", "--preset", "default", *FAST, *LOCAL],
                   "--resume with other options than the run in")


def test_resume_registers_again_after_the_initial_transform_changed(capsys, data, tmp_path):
    """report.json stamps the initial transform file, but --resume compared only the images, mask and prior:
    a rewritten transform was skipped with the old outputs."""
    d = data / "data"
    manifest = write_manifest(tmp_path / "m.csv", [("a", d / "t1_0.nii.gz", d / "t2_0.nii.gz", "")])
    tfm, out = tmp_path / "t.tfm", tmp_path / "out"
    sitk.WriteTransform(sitk.TranslationTransform(2, (1.0, 0.5)), str(tfm))
    args = ["cohort", manifest, "--out", out, "--initial-transform", tfm, "--linear", "none", *FAST, *LOCAL]
    assert run(capsys, *args)[0] == 0
    rc, so, err = run(capsys, *args, "--resume")
    assert rc == 0 and "0 registered, 0 failed, 1 skipped" in so, err
    sitk.WriteTransform(sitk.TranslationTransform(2, (9.0, -7.5)), str(tfm))
    rc, so, err = run(capsys, *args, "--resume")
    assert rc == 0 and "1 registered, 0 failed, 0 skipped" in so, err


def test_resuming_a_run_whose_prior_lowered_its_levels_says_how(tmp_path):
    """Before 2026-12-06 a 2-level prior lowered a cohort's levels to 2; it now runs 3, and --resume with the
    same command line was refused with "levels differ" and no hint that --levels 2 resumes it."""
    before = {"2d": {"levels": 2, "bins": 32}}
    with pytest.raises(priorreg.PriorRegError, match=r"levels differ\) \(a run before 2026-12-06 took a prior's fewer "
                                                      r"levels; --levels 2 resumes it as it ran\)"):
        cohort._check_same_options(str(tmp_path), {"options": before}, {"2d": {"levels": 3, "bins": 32}})
    with pytest.raises(priorreg.PriorRegError) as e:  # other differences: no such hint
        cohort._check_same_options(str(tmp_path), {"options": before}, {"2d": {"levels": 3, "bins": 64}})
    assert "--levels 2" not in str(e.value)
