"""The workflow under the command line, through the CLI: outputs checked before any work,
runs written as a whole, progress lines, presets, messages and start-up (issue 18)."""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import priorreg
import synthetic
from priorreg import cli
from priorreg import io as pio
from priorreg import workflow as wf
from priorreg.options import preset_options

FAST = ["--levels", "2", "--max-iterations", "8", "--bins", "32"]


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, argv, *match, status=2):
    rc, out, err = run(capsys, *argv)
    assert rc == status, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("priorreg: error: "), err
    assert "Traceback" not in err
    for m in match:
        assert m in lines[0], (m, lines[0])
    return lines[0]


def digest(paths):
    return {str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns) for p in paths}


def leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(wf.TEMP_PREFIX)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small 2D T1/T2 pair, a label map, a prior (bins 32, 2 levels) and a one-row manifest."""
    d = tmp_path_factory.mktemp("wf")
    f, m, _, lab = synthetic.case((48, 40), synthetic.T2_MONO, max_disp=2.0)
    paths = {"fixed": d / "fixed.nii.gz", "moving": d / "moving.nii.gz", "labels": d / "labels.nii.gz",
             "prior": d / "prior.npz", "manifest": d / "manifest.csv"}
    pio.write_image(priorreg.Image(f.astype(np.float32)), paths["fixed"])
    pio.write_image(priorreg.Image(m.astype(np.float32)), paths["moving"])
    pio.write_image(priorreg.Image(lab.astype(np.int16)), paths["labels"])
    lab2 = synthetic.anatomy((48, 40), seed=5)
    priorreg.fit_prior([synthetic.contrast(lab2, synthetic.T1, seed=3)],
                       [synthetic.contrast(lab2, synthetic.T2_MONO, seed=4)], bins=32, levels=2).save(paths["prior"])
    paths["manifest"].write_text(f"id,fixed,moving\np1,{paths['fixed']},{paths['moving']}\n")
    return paths


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in (a read-only folder; /sys when running as root)."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for cand in (ro, Path("/sys")):
            try:
                fd, p = tempfile.mkstemp(dir=cand)
            except OSError:
                yield cand
                return
            os.close(fd)
            os.unlink(p)
        pytest.skip("no folder refuses writes here")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- item 3: --out checked before any work


def test_an_unwritable_out_is_refused_before_any_work(capsys, data, unwritable, monkeypatch, tmp_path):
    def no_work(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(wf, "load_input", no_work)
    from priorreg import cohort

    monkeypatch.setattr(cohort, "_start_client", no_work)
    before = digest([data["fixed"], data["moving"], data["prior"], data["manifest"]])
    f, m = data["fixed"], data["moving"]
    out = unwritable / "priorreg-test-out"
    one_line_error(capsys, ["register", f, m, "--out", out, *FAST], f"--out {out}: cannot write in {unwritable}")
    one_line_error(capsys, ["train", "--fixed", f, "--moving", m, "--out", unwritable / "p.npz"], "cannot write in")
    one_line_error(capsys, ["apply", m, "--field", f, "--reference", f, "--out", unwritable / "a.nii.gz"],
                   "cannot write in")
    if importlib.util.find_spec("distributed") is not None:  # without dask the cohort command says so first
        one_line_error(capsys, ["cohort", data["manifest"], "--out", out, *FAST], "cannot write in")
        # A pair's own output folder (out column) that cannot be written is a bad row.
        (tmp_path / "m.csv").write_text(f"fixed,moving,out\n{f},{m},{out}\n")
        one_line_error(capsys, ["cohort", tmp_path / "m.csv", "--out", tmp_path / "c"], "1 bad row(s)",
                       f"line 2: output folder {out}: cannot write in")
    assert not out.exists() and not (tmp_path / "c").exists()
    assert digest([data["fixed"], data["moving"], data["prior"], data["manifest"]]) == before


# --------------------------------------------------------------------------- item 10: a run is written as a whole


def test_a_failure_while_writing_the_report_leaves_no_partial_output(capsys, data, tmp_path, monkeypatch):
    from priorreg import report

    real = report.write_html

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    f, m = data["fixed"], data["moving"]
    before = digest([f, m])
    monkeypatch.setattr(report, "write_html", disk_full)
    out = tmp_path / "run"
    # it read "OSError: [Errno 28] No space left on device", naming no file
    one_line_error(capsys, ["register", f, m, "--out", out, "--quiet", *FAST],
                   f"cannot write the outputs into {out} (No space left on device)")
    assert not out.exists() and leftovers(tmp_path) == []
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["register", f, m, "--out", tmp_path / "empty", "--quiet", *FAST], "No space left")
    assert os.listdir(tmp_path / "empty") == [] and leftovers(tmp_path) == []

    monkeypatch.setattr(report, "write_html", real)
    rc, _, err = run(capsys, "register", f, m, "--out", out, "--quiet", *FAST)  # the rerun is not blocked
    assert rc == 0, err
    assert sorted(os.listdir(out)) == sorted(cli.OUTPUT_NAMES + (cli.LINEAR_NAME,))
    done = digest([out / n for n in cli.OUTPUT_NAMES])
    monkeypatch.setattr(report, "write_html", disk_full)
    one_line_error(capsys, ["register", f, m, "--out", out, "--overwrite", "--quiet", *FAST], "No space left")
    assert digest([out / n for n in cli.OUTPUT_NAMES]) == done and leftovers(out) == []  # the earlier run stays whole
    assert digest([f, m]) == before


def test_run_folder_keeps_other_files_of_an_overwritten_folder(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.json").write_text("old")
    with wf.run_folder(out) as tmp:
        assert os.path.dirname(tmp) == str(out)
        Path(tmp, "report.json").write_text("new")
    assert sorted(os.listdir(out)) == ["notes.txt", "report.json"] and (out / "report.json").read_text() == "new"
    with wf.run_folder(tmp_path / "fresh") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)  # a sibling, renamed into place
        Path(tmp, "a").write_text("x")
    assert os.listdir(tmp_path / "fresh") == ["a"] and leftovers(tmp_path) == []
    assert (os.stat(tmp_path / "fresh").st_mode & 0o777) == pio.default_mode(directory=True)


def test_an_existing_empty_out_folder_is_written_into_not_replaced(tmp_path):
    """The user's folder stays (same inode: its owner, group and mode, a shell inside it), also through a link."""
    out = tmp_path / "o"
    out.mkdir()
    os.chmod(out, 0o2770)
    inode = os.stat(out).st_ino
    with wf.run_folder(out) as tmp:
        assert os.path.dirname(tmp) == str(out)
        Path(tmp, "a").write_text("x")
    assert os.stat(out).st_ino == inode and (os.stat(out).st_mode & 0o7777) == 0o2770
    assert os.listdir(out) == ["a"]
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    wf.check_out_dir(tmp_path / "link", [], overwrite=False)
    with wf.run_folder(tmp_path / "link") as tmp:
        Path(tmp, "b").write_text("y")
    assert os.listdir(target) == ["b"] and (tmp_path / "link").is_symlink()


def test_a_broken_link_as_out_is_refused_before_any_work(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(priorreg.PriorRegError, match=r"is a link to .*nowhere, which does not exist"):
        wf.check_out_dir(tmp_path / "dangling", [], overwrite=False)


# --------------------------------------------------------------------------- item 11: progress without a TTY


def test_one_progress_line_per_level_when_stderr_is_not_a_tty(capsys, data, tmp_path):
    rc, so, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "a", *FAST)
    assert rc == 0, err
    levels = [ln for ln in err.splitlines() if ln.startswith("priorreg: level ")]
    assert [ln.split(":")[1] for ln in levels] == [" level 1/2", " level 2/2"], err
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    for ln, h in zip(levels, rep["levels"]):
        assert f": {h['iterations']} iteration(s), J=" in ln and ln.endswith(" s")
    assert "\r" not in err
    rc, so, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "b", "--quiet", *FAST)
    assert rc == 0 and err == "" and so == ""


# --------------------------------------------------------------------------- presets


def test_register_preset_with_explicit_flags_on_top(capsys, data, tmp_path):
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "mr", "--preset", "mr", *FAST)
    assert rc == 0, err
    rep = json.loads((tmp_path / "mr" / "report.json").read_text())
    assert rep["preset"] == "mr"
    assert rep["options"] == preset_options("mr", 2).replace(levels=2, max_iterations=8, bins=32).as_dict()
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "paper", "--preset", "paper",
                     "--bending", "5", *FAST)
    assert rc == 0, err
    rep = json.loads((tmp_path / "paper" / "report.json").read_text())
    assert rep["preset"] == "paper" and rep["options"]["bending"] == 5.0
    assert rep["options"]["regularization_scaling"] == preset_options("paper", 2).regularization_scaling
    one_line_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "x", "--preset", "fast"],
                   "invalid choice: 'fast'")
    assert not (tmp_path / "x").exists()


def test_a_prior_sets_what_the_preset_left_open(capsys, data, tmp_path):
    # mr (2D) asks 64 bins; the prior has 32 and no --bins is given: the prior's value, with a note.
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "p", "--preset", "mr",
                     "--prior", data["prior"], "--alpha", "0.4", "--max-iterations", "5")
    assert rc == 0, err
    assert "priorreg: using --bins 32 from the prior" in err
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    levels = preset_options("mr", 2).levels  # not the prior's 2: its coarser levels run without it, and say so
    assert rep["preset"] == "mr" and rep["options"]["bins"] == 32 and rep["options"]["levels"] == levels == 3
    assert "the prior has tables for 2 pyramid level(s); the coarsest of the 3 levels runs without it" in err
    assert rep["options"]["mind_weight"] == preset_options("mr", 2).mind_weight and rep["options"]["alpha"] == 0.4


# --------------------------------------------------------------------------- item 8: messages


def test_messages_name_the_function_once(capsys, data, tmp_path):
    line = one_line_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--prior",
                                   data["prior"], "--alpha", "0.5", "--bins", "64"], "bins=32")
    assert f"prior {data['prior']}: the prior was learned with bins=32" in line
    lines = [line,
             one_line_error(capsys, ["train", "--fixed", data["fixed"], "--moving", data["moving"], "--out",
                                     tmp_path / "p.npz", "--regions", "500"], "too fine"),
             one_line_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--alpha", "2"]),
             one_line_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--levels", "9"])]
    for ln in lines:
        assert "()()" not in ln and "::" not in ln and ")(" not in ln, ln


# --------------------------------------------------------------------------- item 9: start-up


def _python(code: str, timeout=300):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lazy_package():
    r = _python("import sys, priorreg; print('torch' in sys.modules)")
    if r.stdout.strip() != "False":
        pytest.xfail("priorreg/__init__.py imports torch on 'import priorreg' (owned elsewhere: lazy attributes needed)")


HEAVY = ("torch", "SimpleITK", "scipy", "PIL", "dask")


def test_argument_errors_and_help_load_no_heavy_library(lazy_package):
    for argv in (["register", "a", "b", "--out", "o", "--alpha", "1.5"], ["register", "a", "b"], ["--help"]):
        r = _python("import sys\nfrom priorreg.cli import main\ntry:\n    rc = main(%r)\nexcept SystemExit as e:\n"
                    "    rc = e.code\nprint(rc, [m for m in %r if m in sys.modules])" % (argv, HEAVY))
        rc, loaded = r.stdout.strip().splitlines()[-1].split(" ", 1)
        assert loaded == "[]", (argv, r.stdout, r.stderr)
        assert rc == ("0" if argv == ["--help"] else "2"), (argv, r.stdout, r.stderr)


def test_ctrl_c_while_the_heavy_libraries_load_is_one_line(lazy_package, data, tmp_path):
    # Ctrl-C arrives while torch is being imported (after the checks, before the registration).
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from priorreg.cli import main\n"
        f"sys.exit(main(['register', {str(data['fixed'])!r}, {str(data['moving'])!r}, '--out', {str(tmp_path / 'o')!r}]))\n"
    )
    r = _python(code)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.strip() == "priorreg: error: interrupted" and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_the_summary_gives_the_whole_rotation_not_the_largest_euler_angle():
    """Euler angles (-3.65, -0.32, -5.18) degrees were summarised as 'rotation 5.2 deg'; the rotation is 6.35."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from priorreg.transform import rotation_angle

    R = Rotation.from_euler("xyz", [-3.65, -0.32, -5.18], degrees=True).as_matrix()
    assert rotation_angle(R) == pytest.approx(6.352, abs=1e-3)
    assert rotation_angle(np.diag([1.1, 0.9, 1.0]) @ R) == pytest.approx(6.352, abs=1e-3)  # scaling aside
    assert rotation_angle([[0.0, -1.0], [1.0, 0.0]]) == pytest.approx(90.0)


def test_the_summary_line_keeps_a_small_translation():
    """A 2.4-voxel shift of 0.01 mm voxels read "translation 0.0 mm"."""
    import types

    import numpy as np

    lin = types.SimpleNamespace(kind="affine", matrix=np.eye(3), translation_mm=(0.024, 0.0, 0.0), rejected=False)
    assert wf._linear_summary(lin).endswith("rotation 0.0 deg, translation 0.024 mm")
    lin.translation_mm = (1234.56, 0.0, 0.0)
    assert wf._linear_summary(lin).endswith("translation 1234.6 mm")  # not 1.23e+03


def test_the_summary_line_names_an_initial_transform_used_as_it_is():
    """With --initial-transform and --linear none the summary read "linear affine", as if the stage had run."""
    import types

    import numpy as np

    lin = types.SimpleNamespace(kind="rigid", matrix=np.eye(2), translation_mm=(3.0, 4.0), rejected=False)
    assert wf._linear_summary(lin, stage_ran=False) == ", initial transform (rigid): rotation 0.0 deg, translation 5.0 mm"
    assert wf._linear_summary(lin) == ", linear rigid: rotation 0.0 deg, translation 5.0 mm"


def test_a_rejected_linear_stage_is_not_summarised_as_a_found_identity():
    """Its optimum failed the MIND check and world alignment was kept: the summary read "rotation 0.0 deg,
    translation 0 mm" and the reason was in report.json only."""
    import types

    import numpy as np

    why = "its optimum raised mutual information but worsened the MIND descriptor distance"
    lin = types.SimpleNamespace(kind="affine", matrix=np.eye(3), translation_mm=(0.0, 0.0, 0.0), rejected=True, notes=[why])
    assert wf._linear_summary(lin) == ", linear affine: not kept (see its note)"
    assert wf.linear_notes(lin, None) == [f"linear stage: {why}"]
    lin.rejected = False
    assert wf.linear_notes(lin, None) == [] and "rotation 0.0 deg" in wf._linear_summary(lin)
    # an affine stage that fell back to rigid said why in report.json only
    lin.kind, lin.notes = "rigid", ["the affine estimate had scales [1.3, 0.8] and shears [0.0]: the rigid one is used"]
    said = wf.linear_notes(lin, types.SimpleNamespace(linear="affine"))
    assert said == ["linear stage: the affine estimate had scales [1.3, 0.8] and shears [0.0]: the rigid one is used"]
    assert wf.linear_notes(lin, types.SimpleNamespace(linear="rigid")) == []


def test_a_folder_another_run_wrote_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    """Two runs into one new --out: the later one replaced the first's outputs, both exit 0."""
    from priorreg.errors import PriorRegError
    from priorreg.workflow import run_folder

    out = tmp_path / "same"
    with run_folder(out, overwrite=False) as tmp:  # another file appearing is not a run's output: no refusal
        (Path(tmp) / "field.nii.gz").write_text("mine", encoding="utf-8")
        out.mkdir()
        (out / ".DS_Store").write_text("desktop", encoding="utf-8")
    assert sorted(os.listdir(out)) == [".DS_Store", "field.nii.gz"]
    shutil.rmtree(out)
    with pytest.raises(PriorRegError, match="same gained report.json from another run while this one ran; they are not replaced"):
        with run_folder(out, overwrite=False) as tmp:
            (Path(tmp) / "report.json").write_text("mine", encoding="utf-8")
            out.mkdir()  # the other run, done first
            (out / "report.json").write_text("theirs", encoding="utf-8")
    assert (out / "report.json").read_text(encoding="utf-8") == "theirs" and sorted(os.listdir(tmp_path)) == ["same"]
    with run_folder(out, overwrite=True) as tmp:  # --overwrite: replaced, as asked
        (Path(tmp) / "report.json").write_text("mine", encoding="utf-8")
    assert (out / "report.json").read_text(encoding="utf-8") == "mine"
