"""The priorreg command line: every command, every error, the option defaults, outputs."""
import dataclasses
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import priorreg
from priorreg.options import USER_OPTIONS, preset_options
import synthetic
from priorreg import cli
from priorreg import io as pio

FAST = ["--levels", "2", "--max-iterations", "8", "--bins", "32"]



def _options_from_args(args):
    """What register() runs for parsed ``register`` arguments of a 2D pair: the preset, then the flags given."""
    return preset_options(getattr(args, "preset", None) or "default", 2).replace(**cli.engine_overrides(args))

class Tty(io.StringIO):
    """A stream that says it is a terminal: the progress bar draws on it."""

    def isatty(self):
        return True


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(capsys, argv, match):
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("priorreg: error: "), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small 2D multi-modal pair on a rotated, anisotropic grid, a label map, a mask and a prior."""
    d = tmp_path_factory.mktemp("data")
    fixed, moving, v, lab = synthetic.case((48, 40), synthetic.T2_MONO, max_disp=2.0)
    th = 0.3
    D = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    geo = dict(spacing=(1.2, 0.9), origin=(5.0, -2.0), direction=D)
    paths = {
        "fixed": d / "fixed.nii.gz",
        "moving": d / "moving.nii.gz",
        "labels": d / "labels.nii.gz",
        "mask": d / "mask.nii.gz",
        "train_f": d / "train_t1.nii.gz",
        "train_m": d / "train_t2.nii.gz",
    }
    pio.write_image(priorreg.Image(fixed.astype(np.float32), **geo), paths["fixed"])
    pio.write_image(priorreg.Image(moving.astype(np.float32), **geo), paths["moving"])
    pio.write_image(priorreg.Image(lab.astype(np.int16), **geo), paths["labels"])
    pio.write_image(priorreg.Image((lab > 0).astype(np.uint8), **geo), paths["mask"])
    # Aligned training pair of the same two contrasts (another phantom).
    lab2 = synthetic.anatomy((48, 40), seed=5)
    pio.write_image(priorreg.Image(synthetic.contrast(lab2, synthetic.T1, seed=3).astype(np.float32), **geo), paths["train_f"])
    pio.write_image(priorreg.Image(synthetic.contrast(lab2, synthetic.T2_MONO, seed=4).astype(np.float32), **geo),
                    paths["train_m"])  # on the mask's grid: a mask is refused on another grid
    paths["prior"] = d / "prior.npz"
    assert cli.main(["train", "--fixed", str(paths["train_f"]), "--moving", str(paths["train_m"]),
                     "--out", str(paths["prior"]), "--bins", "32", "--levels", "2", "--quiet"]) == 0
    return paths


def digest(paths):
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime_ns) for p in paths}


def test_train_writes_exactly_the_given_path(capsys, data, tmp_path):
    out = tmp_path / "my.prior"
    rc, so, err = run(capsys, "train", "--fixed", data["train_f"], "--moving", data["train_m"], "--mask", data["mask"],
                      "--out", out, "--bins", "16", "--levels", "1")
    assert rc == 0 and "written to" in so
    assert "one training pair: register's alpha auto gives such a prior no weight" in err  # told before registering
    assert os.listdir(tmp_path) == ["my.prior"]
    p = priorreg.Prior.load(out)
    assert p.bins == 16 and p.levels == 1 and p.dim == 2 and p.n_pairs == 1
    assert_error(capsys, ["train", "--fixed", data["train_f"], "--moving", data["train_m"], "--out", out], "exists")
    # a folder that does not exist yet, named with a slash: it said "Not a directory: .../.priorreg-xyz.tmp"
    assert_error(capsys, ["train", "--fixed", data["train_f"], "--moving", data["train_m"], "--out", f"{tmp_path / 'new'}/"],
                 f"--out {tmp_path / 'new'}/ is a directory; give a file name")
    assert_error(capsys, ["train", "--fixed", data["train_f"], data["fixed"], "--moving", data["train_m"],
                          "--out", tmp_path / "x.npz"], "one moving per fixed")
    # The same shape on another grid (flipped axes: same world content) would pair voxels that do not correspond.
    m = pio.read_image(data["train_m"])
    A, b = m.index_to_world()
    flipped = priorreg.Image(m.array[::-1].copy(), m.spacing, A @ [m.shape[0] - 1, 0] + b, m.direction @ np.diag([-1.0, 1.0]))
    pio.write_image(flipped, tmp_path / "flipped.nii.gz")
    line = assert_error(capsys, ["train", "--fixed", data["train_f"], "--moving", tmp_path / "flipped.nii.gz",
                                 "--out", tmp_path / "y.npz"], "train: pair 0 is not on one grid")
    assert "origin" in line and not (tmp_path / "y.npz").exists()
    # errors of the options and of fit_prior are the command's own (a new user saw "register(): bins ...")
    line = assert_error(capsys, ["train", "--fixed", data["train_f"], "--moving", data["train_m"], "--out", tmp_path / "z.npz",
                                 "--bins", "2"], "train: bins must be an integer >= 4")
    assert "register()" not in line
    assert_error(capsys, ["train", "--fixed", data["train_f"], "--moving", data["train_m"], "--out", tmp_path / "z.npz",
                          "--regions", "40"], "train: regions=[40, 40] is too fine")


def test_train_warns_in_one_line_about_a_pair_that_is_not_aligned(capsys, tmp_path):
    from importlib.resources import files

    brainweb = files("priorreg") / "data" / "brainweb"
    t1, pd = brainweb / "BrainT1Slice.png", brainweb / "BrainProtonDensitySlice.png"
    shifted = tmp_path / "pd_shifted.png"
    m = pio.read_image(pd)
    pio.write_image(m.with_array(np.roll(m.array, 4, axis=1)), shifted)
    rc, so, se = run(capsys, "train", "--fixed", t1, t1, "--moving", pd, shifted, "--out", tmp_path / "p.npz", "--levels", "1")
    assert rc == 0 and "written to" in so and "Traceback" not in se
    lines = [ln for ln in se.splitlines() if "warning" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"priorreg: warning: train: pair 1 ({t1} and {shifted}) does not look aligned")
    assert "4 voxels (4 mm) along i" in lines[0]


def test_train_says_a_regional_priors_frames_differ_in_its_own_words(capsys, tmp_path):
    """The warning named fit_prior(), a function the command's user never called."""
    from importlib.resources import files

    brainweb = files("priorreg") / "data" / "brainweb"
    t1, pd = (pio.read_image(brainweb / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
    for name, img in (("t1c.nii.gz", t1), ("pdc.nii.gz", pd)):
        pio.write_image(img.with_array(np.ascontiguousarray(img.array[:150])), tmp_path / name)
    rc, so, se = run(capsys, "train", "--fixed", brainweb / "BrainT1Slice.png", tmp_path / "t1c.nii.gz", "--moving",
                     brainweb / "BrainProtonDensitySlice.png", tmp_path / "pdc.nii.gz", "--regions", "2", "--levels", "2",
                     "--out", tmp_path / "p.npz")
    assert rc == 0, se
    assert "priorreg: warning: train: the training pairs' fields of view differ" in se and "fit_prior" not in se, se


def test_train_regional_prior_and_bad_regions(capsys, data, tmp_path):
    out = tmp_path / "regional.npz"
    rc, so, _ = run(capsys, "train", "--fixed", data["train_f"], "--moving", data["train_m"], "--out", out,
                    "--bins", "32", "--levels", "2", "--regions", "3x2")
    assert rc == 0 and "regions=3x2" in so
    p = priorreg.Prior.load(out)
    assert p.regions == (3, 2) and p.tables.shape == (2, 6, 32, 32)
    rc, so, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "run", "--prior", out,
                      "--alpha", "0.4", "--regularization-scaling", "alpha", *FAST)
    assert rc == 0, err
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["prior"]["regions"] == [3, 2] and "KL" in rep["levels"][-1]["terms"][-1]
    assert rep["options"]["regularization_scaling"] == "alpha"
    assert "times alpha at levels with 0 &lt; alpha &lt; 1" in (tmp_path / "run" / "report.html").read_text()
    rc, so, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "run-ckl", "--prior", out,
                      "--alpha", "0.4", "--prior-term", "ckl", *FAST)
    assert rc == 0, err
    rep = json.loads((tmp_path / "run-ckl" / "report.json").read_text())
    assert rep["options"]["prior_term"] == "ckl" and "cKL" in rep["levels"][-1]["terms"][-1]
    for bad, msg in (("3y2", "--regions must be K or KxK"), ("2x2x2", "regions must be an integer >= 1 or 2 of them"),
                     ("500", "too fine")):
        assert_error(capsys, ["train", "--fixed", data["train_f"], "--moving", data["train_m"], "--out",
                              tmp_path / "bad.npz", "--regions", bad], msg)
    assert not (tmp_path / "bad.npz").exists()


def test_register_with_regional_mi_and_sampling(capsys, data, tmp_path):
    # Local similarity and a histogram subset from the command line; the report carries both
    # and the -rMI term's history; a block layout too fine for the image is refused cleanly.
    rc, so, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "run",
                      "--local-weight", "1", "--local-regions", "2x2", "--max-samples", "1000", *FAST)
    assert rc == 0, err
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["options"]["local_weight"] == 1.0 and rep["options"]["local_regions"] == [2, 2]
    assert rep["options"]["max_samples"] == 1000 and "-rMI" in rep["levels"][-1]["terms"][-1]
    assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "bad",
                          "--local-weight", "1", "--local-regions", "40"], "local_regions=[40, 40] is too fine")


def test_register_writes_all_outputs_and_never_the_inputs(capsys, data, tmp_path):
    inputs = [data["fixed"], data["moving"], data["prior"], data["mask"]]
    before = digest(inputs)
    out = tmp_path / "run"
    rc, so, err = run(capsys, "register", data["fixed"], data["moving"], "--out", out, "--prior", data["prior"],
                      "--alpha", "0.4", "--mask", data["mask"], *FAST)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == sorted(cli.OUTPUT_NAMES + (cli.LINEAR_NAME,))
    assert "final energy" in so and "folding" in so and len(so.strip().splitlines()) == 1
    assert "\r" not in err  # not a TTY: no progress bar
    assert digest(inputs) == before
    rep = json.loads((out / "report.json").read_text())
    assert rep["options"] == {**dataclasses.asdict(priorreg.PRESETS["default"][2]), "alpha": 0.4, "levels": 2,
                              "max_iterations": 8, "bins": 32}
    assert len(rep["levels"]) == 2 and all("energy" in lv and "seconds" in lv for lv in rep["levels"])
    assert set(rep["jacobian"]) == {"min", "max", "percent_nonpositive"}
    assert rep["geometry"]["fixed"]["spacing_mm"] == pytest.approx([1.2, 0.9])
    assert rep["versions"]["torch"] and rep["device"] == "cpu"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "learned prior" in html
    assert "<td>preset</td><td>default</td>" in html  # the page named no preset (a new-user pass)
    assert "src='http" not in html and 'src="http' not in html  # self-contained
    warped = pio.read_image(out / "warped.nii.gz")
    fixed = pio.read_image(data["fixed"])
    assert warped.same_grid(fixed)
    jac = pio.read_image(out / "jacobian.nii.gz")
    assert jac.shape == fixed.shape and jac.array.min() == pytest.approx(rep["jacobian"]["min"], rel=1e-5)

    # --overwrite refusal, then acceptance.
    assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", out, *FAST], "not empty")
    rc, _, _ = run(capsys, "register", data["fixed"], data["moving"], "--out", out, "--overwrite", "--quiet", *FAST)
    assert rc == 0 and (out / "linear.tfm").is_file()
    (out / "notes.txt").write_text("mine")  # the earlier run's linear.tfm stayed beside a run without one
    rc, _, _ = run(capsys, "register", data["fixed"], data["moving"], "--out", out, "--overwrite", "--quiet",
                   "--linear", "none", *FAST)
    assert rc == 0 and not (out / "linear.tfm").exists() and (out / "notes.txt").read_text() == "mine"
    # Inputs are never outputs.
    assert_error(capsys, ["register", out / "warped.nii.gz", data["moving"], "--out", out, "--overwrite", *FAST],
                 "would overwrite the input")
    assert_error(capsys, ["apply", data["moving"], "--field", out / "field.nii.gz", "--reference", data["fixed"],
                          "--out", data["moving"], "--overwrite"], "is an input")
    # An empty --out is not the working directory (it wrote there, not empty, without --overwrite).
    assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", "", *FAST], "--out is empty")
    assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", out / "report.json" / "sub", *FAST],
                 "report.json is a file")


def test_errors_name_the_flag_not_the_library_function(capsys, data, tmp_path):
    """A new user read 'Prior.load(): ...', 'read_itk_transform(): ...' and 'register(): ...' from commands."""
    (tmp_path / "bad.npz").write_bytes(b"PK not a prior")
    (tmp_path / "bad.tfm").write_text("not a transform")
    line = assert_error(capsys, ["register", data["fixed"], data["moving"], "--prior", tmp_path / "bad.npz",
                                 "--out", tmp_path / "o1", *FAST], "--prior: ")
    assert "Prior.load()" not in line
    line = assert_error(capsys, ["register", data["fixed"], data["moving"], "--initial-transform", tmp_path / "bad.tfm",
                                 "--out", tmp_path / "o2", *FAST], "--initial-transform: ")
    assert "read_itk_transform()" not in line
    from priorreg.workflow import spoken

    assert spoken("register(): overlap too small") == "overlap too small"
    assert spoken("warp(): no point") == "no point" and spoken("fixed: x") == "fixed: x"


def test_field_file_reproduces_warped_with_sitk_and_apply(capsys, data, tmp_path):
    out = tmp_path / "run"
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--out", out, "--quiet", *FAST)
    assert rc == 0, err
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    disp = sitk.ReadImage(str(out / "field.nii.gz"), sitk.sitkVectorFloat64)
    ref = sitk.ReadImage(str(data["fixed"]))
    got = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(data["moving"])), ref,
                                               sitk.DisplacementFieldTransform(disp), sitk.sitkLinear, 0.0,
                                               sitk.sitkFloat32))
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(got[inner], warped[inner], atol=1e-4)
    # priorreg apply gives the same image, and keeps labels with nearest interpolation.
    rc, so, _ = run(capsys, "apply", data["moving"], "--field", out / "field.nii.gz", "--reference", data["fixed"],
                    "--out", tmp_path / "applied.nii.gz")
    assert rc == 0 and "wrote" in so
    np.testing.assert_allclose(pio.read_image(tmp_path / "applied.nii.gz").array, warped, atol=1e-5)
    mov = pio.read_image(data["moving"])
    pio.write_image(mov.with_array((mov.array - mov.array.min()) * 1000), tmp_path / "m1000.nii.gz")
    rc, _, err = run(capsys, "apply", tmp_path / "m1000.nii.gz", "--field", out / "field.nii.gz", "--reference",
                     data["fixed"], "--out", tmp_path / "applied.png")  # PNG rounds: said, not done silently
    assert rc == 0 and "PNG holds whole numbers, so the interpolated values were rounded" in err, err
    rc, _, err = run(capsys, "apply", data["labels"], "--field", out / "field.nii.gz", "--reference", data["fixed"],
                     "--out", tmp_path / "labels.nii.gz", "--interpolation", "nearest")
    assert rc == 0 and "label map" not in err
    rc, _, err = run(capsys, "apply", data["labels"], "--field", out / "field.nii.gz", "--reference", data["fixed"],
                     "--out", tmp_path / "labels_linear.nii.gz")  # the default: linear, which blends labels
    assert rc == 0 and "like a label map" in err and "--interpolation nearest" in err
    labf = pio.read_image(data["labels"])  # labels stored as floats (BraTS ships them so) get the same hint
    pio.write_image(labf.with_array(labf.array.astype(np.float32)), tmp_path / "labels_f32.nii.gz")
    rc, _, err = run(capsys, "apply", tmp_path / "labels_f32.nii.gz", "--field", out / "field.nii.gz", "--reference",
                     data["fixed"], "--out", tmp_path / "labels_f32_linear.nii.gz")
    assert rc == 0 and "like a label map" in err
    rc, _, err = run(capsys, "apply", data["moving"], "--field", out / "field.nii.gz", "--reference", data["fixed"],
                     "--out", tmp_path / "image_linear.nii.gz")  # an image with fractional values: no hint
    assert rc == 0 and "label map" not in err
    rgb = sitk.Compose(*[sitk.ReadImage(str(data["labels"]), sitk.sitkUInt8) * k for k in (1, 2, 3)])
    sitk.WriteImage(rgb, str(tmp_path / "labels_rgb.nii.gz"))  # labels as colours: their grey values are not labels
    assert_error(capsys, ["apply", tmp_path / "labels_rgb.nii.gz", "--field", out / "field.nii.gz", "--reference",
                          data["fixed"], "--out", tmp_path / "x.nii.gz", "--interpolation", "nearest"], "is a colour (RGB")
    lab = pio.read_image(tmp_path / "labels.nii.gz").array
    assert lab.dtype == np.int16 and set(np.unique(lab)) <= set(np.unique(pio.read_image(data["labels"]).array))
    other = tmp_path / "other_grid.nii.gz"  # the fixed image's shape on the default grid
    pio.write_image(priorreg.Image(pio.read_image(data["fixed"]).array), other)
    assert_error(capsys, ["apply", data["moving"], "--field", out / "field.nii.gz", "--reference",
                          other, "--out", tmp_path / "x.nii.gz"], "different grid")
    far = pio.read_image(data["moving"])  # the moving image 5 m away: apply wrote an all-zero image, exit 0
    pio.write_image(priorreg.Image(far.array, far.spacing, tuple(o + 5000.0 for o in far.origin), far.direction),
                    tmp_path / "far.nii.gz")
    assert_error(capsys, ["apply", tmp_path / "far.nii.gz", "--field", out / "field.nii.gz", "--reference",
                          data["fixed"], "--out", tmp_path / "far_out.nii.gz"], "no point of the reference grid lands inside")
    assert not (tmp_path / "far_out.nii.gz").exists()
    fixed, far = pio.read_image(data["fixed"]), pio.read_image(tmp_path / "far.nii.gz")
    with pytest.raises(priorreg.PriorRegError, match="no point of the reference grid lands inside"):
        priorreg.warp(far, np.zeros((2, *fixed.shape)), reference=fixed)
    assert not priorreg.warp(far, np.zeros((2, *fixed.shape)), reference=fixed, allow_empty=True).array.any()
    corner = pio.read_image(data["moving"])  # mostly off the reference, a corner inside: written, with a warning
    shift = tuple(np.asarray(corner.origin) + corner.direction @ (0.8 * np.array(corner.shape) * corner.spacing))
    pio.write_image(priorreg.Image(corner.array, corner.spacing, shift, corner.direction), tmp_path / "corner.nii.gz")
    rc, _, err = run(capsys, "apply", tmp_path / "corner.nii.gz", "--field", out / "field.nii.gz", "--reference",
                     data["fixed"], "--out", tmp_path / "corner_out.nii.gz")
    assert rc == 0 and "priorreg: warning: the moving image lies mostly outside the reference grid" in err, err  # no warp(): a function the user did not call
    assert "covers only" not in err  # one warning for one cause
    crop = pio.read_image(data["moving"])  # a corner of the moving image, in place: most of the output is 0
    pio.write_image(priorreg.Image(crop.array[:16, :14], crop.spacing, crop.origin, crop.direction), tmp_path / "crop.nii.gz")
    rc, _, err = run(capsys, "apply", tmp_path / "crop.nii.gz", "--field", out / "field.nii.gz", "--reference",
                     data["fixed"], "--out", tmp_path / "crop_out.nii.gz")
    assert rc == 0 and "priorreg: warning: apply: the moving image covers only" in err, err
    assert "% of the reference image's anatomy through the field" in err
    rc, _, err = run(capsys, "apply", data["moving"], "--field", out / "field.nii.gz", "--reference", data["fixed"],
                     "--out", tmp_path / "whole.nii.gz")
    assert rc == 0 and "covers only" not in err


def test_demo_runs_and_reports(capsys, tmp_path):
    out = tmp_path / "demo"
    rc, so, err = run(capsys, "demo", "--out", out)
    assert rc == 0, err
    for name in ("alphaauto", "alpha0.7"):  # both runs' reports are named
        assert str((out / name / "report.html").resolve()) in so
    inputs = json.loads((out / "alphaauto" / "report.json").read_text())["inputs"]
    assert inputs["moving"]["path"] == str((out / "moving_PD_deformed.nii.gz").resolve())  # what was registered
    assert sorted(os.listdir(out / "alpha0.7")) == sorted(cli.OUTPUT_NAMES + (cli.LINEAR_NAME,))
    summary = json.loads((out / "demo.json").read_text())
    epe = {e["alpha"]: e["endpoint_error_mm_mean"] for e in summary["endpoint_error"]}
    # the prior comes from the other half of the slice (no oracle): both runs must beat doing nothing
    assert max(epe.values()) < 0.5 * summary["known_field"]["mean_mm_in_head"]
    assert "one training pair" in err and "MI only (alpha auto gave the prior no weight)" in (out / "alphaauto" / "report.html").read_text(encoding="utf-8")
    said = json.loads((out / "alphaauto" / "report.json").read_text())["warnings"]  # as the console printed them
    assert said and all(f"warning: {w}" in err for w in said) and not any(w.startswith("register():") for w in said)
    assert run(capsys, "demo", "--out", out)[0] == 0  # a previous demo directory is reused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert_error(capsys, ["demo", "--out", tmp_path / "other"], "not empty")


def test_option_flags_mirror_registration_options():
    parser = cli.build_parser()
    args = parser.parse_args(["register", "f.nii", "m.nii", "--out", "d"])
    assert _options_from_args(args) == priorreg.PRESETS["default"][2]
    help_text = parser._subparsers._group_actions[0].choices["register"].format_help()
    for f in dataclasses.fields(priorreg.RegistrationOptions):
        flag = cli.option_flag(f.name)
        sub = parser._subparsers._group_actions[0].choices["register"]
        action = next(a for a in sub._actions if flag in a.option_strings)
        if f.name in USER_OPTIONS:  # on the first screen, with what no flag gives
            assert f"default: {getattr(priorreg.PRESETS['default'][2], f.name)!r}" in action.help
        else:  # a solver internal: accepted, documented in docs/options.md, not in --help
            assert flag not in help_text
        if f.name == "local_regions":
            for text, value in (("auto", "auto"), ("3", 3), ("2x3x2", (2, 3, 2))):
                parsed = parser.parse_args(["register", "f", "m", "--out", "d", flag, text])
                assert _options_from_args(parsed).local_regions == value
            continue
        value = {"str": None, "int": 5000 if f.name == "max_samples" else 5, "float": 0.5}[f.type]
        if f.type == "str":
            continue
        parsed = parser.parse_args(["register", "f", "m", "--out", "d", flag, str(value)])
        assert getattr(_options_from_args(parsed), f.name) == value
    args = parser.parse_args(["register", "f", "m", "--out", "d", "--force", "exact", "--dtype", "float64"])
    assert _options_from_args(args).force == "exact" and _options_from_args(args).dtype == "float64"
    assert "--max-iterations" in help_text and "--parzen-sigma" in help_text and "--step-voxels" not in help_text


@pytest.mark.parametrize("command", ["train", "register", "apply", "demo"])
def test_help_on_every_command(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "usage: priorreg " + command in capsys.readouterr().out


def test_help_says_what_the_flags_do_here(capsys):
    """Third new-user pass: reST markup on the terminal, alpha's default without the prior's 'auto', cuda:N
    missing from the usage line, and train's help promising solver flags it refuses."""
    texts = {}
    for command in ("register", "train"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        texts[command] = " ".join(capsys.readouterr().out.split())
    reg, train = texts["register"], texts["train"]
    assert "``" not in reg and ":mod:" not in reg and ":func:" not in reg
    assert "(default: 1.0 without --prior, 'auto' with one)" in reg and "--device {cpu,cuda,cuda:N}" in reg
    assert "solver internals" in reg and "solver internals" not in train and "a prior brings its own" not in train
    # Fourth pass: the flags named Python arguments and modules --help hides (regularization_scaling,
    # priorreg.prior_weight, linear="none"), and --device came after 15 lines on the prior's term.
    assert "priorreg." not in reg and "regularization_scaling" not in reg and '="none"' not in reg
    order = [reg.index(cli.option_flag(n) + " ") for n in USER_OPTIONS]
    assert order == sorted(order) and reg.index("--device") < reg.index("--prior-term")


def test_a_shortened_flag_is_refused_not_taken_for_another(capsys):
    """argparse took --step-voxel for the hidden --step-voxels without a word."""
    assert_error(capsys, ["register", "f.nii.gz", "m.nii.gz", "--out", "o", "--step-voxel", "1"],
                 "unrecognized arguments: --step-voxel 1")


def test_errors_are_one_line(capsys, data, tmp_path):
    f, m, out = data["fixed"], data["moving"], tmp_path / "o"
    assert_error(capsys, ["register", f, tmp_path / "nope.nii.gz", "--out", out], "no such file")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    assert_error(capsys, ["register", f, tmp_path / "broken.nii.gz", "--out", out], "cannot read")
    (tmp_path / "img.jpg2").write_bytes(b"x")
    assert_error(capsys, ["register", f, tmp_path / "img.jpg2", "--out", out], "unsupported file format")
    vol = tmp_path / "vol.nii.gz"
    pio.write_image(priorreg.Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)), vol)
    assert_error(capsys, ["register", f, vol, "--out", out], "both must be 2D or both 3D")
    nan = tmp_path / "nan.mha"  # (ITK's NIfTI writer does not keep NaN)
    a = pio.read_image(m)
    arr = a.array.copy()
    arr[3, 4] = np.nan
    pio.write_image(a.with_array(arr), nan)
    assert_error(capsys, ["register", f, nan, "--out", out], "NaN")
    empty = tmp_path / "empty_mask.nii.gz"
    pio.write_image(a.with_array(np.zeros(a.shape, np.uint8)), empty)
    assert_error(capsys, ["register", f, m, "--out", out, "--mask", empty], "empty")
    shifted = tmp_path / "shifted_mask.nii.gz"  # the right shape 1 m away: nowhere near the fixed image
    fi = pio.read_image(f)
    pio.write_image(priorreg.Image(np.ones(fi.shape, np.uint8), fi.spacing, np.add(fi.origin, 1000.0), fi.direction), shifted)
    line = assert_error(capsys, ["register", f, m, "--out", out, "--mask", shifted], "lies on another grid than the fixed image")
    assert "covers none of the fixed image's voxels" in line
    assert_error(capsys, ["register", f, m, "--out", out, "--alpha", "0.5"], "needs a learned prior")
    assert_error(capsys, ["register", f, m, "--out", out, "--prior", data["prior"], "--alpha", "0.5", "--bins", "64"],
                 "bins=32")
    p3 = tmp_path / "p3.npz"
    priorreg.fit_prior([np.random.default_rng(1).random((16, 16, 16))], [np.random.default_rng(2).random((16, 16, 16))],
                       bins=32, levels=1).save(p3)
    line = assert_error(capsys, ["register", f, m, "--out", out, "--prior", p3, "--alpha", "0.5"], "3D")
    assert f"prior {p3}: the prior was learned on 3D images but {f} (2D " in line
    assert line.endswith("is 2D; learn one from 2D pairs (priorreg train) or register without --prior")
    assert_error(capsys, ["register", f, m, "--out", out, "--alpha", "2"], "alpha must be")
    assert_error(capsys, ["register", f, m], "--out")  # argparse usage error, one line
    assert_error(capsys, ["register", f, m, "--out", out, "--levels", "x"], "invalid int value")
    assert_error(capsys, ["apply", m, "--field", m, "--reference", f, "--out", tmp_path / "a.nii.gz"],
                 "not a displacement field")
    assert not out.exists()  # nothing created by failed runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_no_cuda_device(capsys, data, tmp_path):
    line = assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--device", "cuda"],
                        "no CUDA device")
    assert line.endswith("use --device cpu")  # the command line's words, not Python's device='cpu'


def test_a_mask_too_small_for_the_linear_stage_says_so(capsys, data, tmp_path):
    """It said 'levels=1 leaves 1 fixed samples at level 0; use fewer levels' (there are no fewer)."""
    fi = pio.read_image(data["fixed"])
    tiny = np.zeros(fi.shape, np.uint8)
    tiny[20, 20] = 1
    pio.write_image(fi.with_array(tiny), tmp_path / "tiny.nii.gz")
    line = assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--mask",
                                 tmp_path / "tiny.nii.gz", "--levels", "1"], "fixed samples (needs 64) at its level 1/1")
    assert "has 13 fixed samples" in line  # the one voxel and its 2 mm margin (12 voxels of 0.9-1.2 mm)
    assert "give a larger mask, or skip the stage (linear='none', --linear none)" in line and "fewer levels" not in line


def test_a_mask_on_another_grid_is_taken_where_it_lies_in_space(tmp_path):
    """A mask made on another grid of the same anatomy (a 1 mm brain mask for a 2 mm image) was refused; it is
    resampled onto the fixed grid by world position (nearest neighbour), with a note. A shifted one covers
    another region, voxel for voxel where it lies."""
    fixed = priorreg.Image(np.zeros((20, 30)), spacing=(2.0, 2.0), origin=(10.0, -5.0))
    fine = np.zeros((40, 60), np.uint8)
    fine[10:30, 20:40] = 1  # array rows run along world y (from -5 mm), columns along x (from 10 mm): SimpleITK's layout
    pio.write_image(priorreg.Image(fine, (1.0, 1.0), (10.0, -5.0)), tmp_path / "fine.nii.gz")
    notes = []
    m = cli.wf.load_mask(tmp_path / "fine.nii.gz", fixed, notes)
    want = np.zeros((20, 30))
    want[5:15, 10:20] = 1
    assert np.array_equal(m, want) and "resampled onto it (nearest neighbour, by world position)" in notes[0]
    pio.write_image(priorreg.Image(np.ones((20, 30), np.uint8), (2.0, 2.0), (10.0, 15.0)), tmp_path / "moved.nii.gz")
    m = cli.wf.load_mask(tmp_path / "moved.nii.gz", fixed, [])
    assert m[:10].sum() == 0 and m[10:].all()  # 20 mm further along y: the fixed image's last 10 rows


def test_a_single_slice_mask_from_another_slice_is_refused(tmp_path):
    """Single slices are registered in 2D: a mask slice 40 mm away (or in another plane) would land on the
    fixed slice's 2D positions, so it is refused, not resampled."""
    def slice_file(arr, z, name):
        img = sitk.GetImageFromArray(arr[None])  # 1 x Y x X: one axial slice at z
        img.SetOrigin((0.0, 0.0, z))
        sitk.WriteImage(img, str(tmp_path / name))
        return tmp_path / name

    fixed = cli.wf.load_input(slice_file(np.random.default_rng(0).random((20, 30)).astype(np.float32), 0.0, "f.nii.gz"),
                              "fixed", [])
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 1
    with pytest.raises(priorreg.PriorRegError, match=r"lies in another slice plane than the fixed image \(slice plane"):
        cli.wf.load_mask(slice_file(m, 40.0, "m40.nii.gz"), fixed, [])
    assert cli.wf.load_mask(slice_file(m, 0.0, "m0.nii.gz"), fixed, []).sum() == 25  # its own slice: taken as it is


def test_progress_bar_on_a_tty_fills_by_the_work_of_the_levels_finished():
    s = Tty()
    con = cli.Console(stream=s)
    cb = con.progress(10, 2, spacing=(1.0, 1.0))  # 2D: the finer level has 4 times the voxels, 4/5 of the work
    for it in range(1, 12):  # the solver calls back after each accepted step; never shown past the cap
        cb(1, min(it, 10), -0.5 - it / 100)
    cb(0, 1, -0.7)  # the last level converges after one step: its bar still ends full
    con.end_bar(done=True)
    text = s.getvalue()
    draws = [d for d in text.replace("\n", "\r").split("\r") if d]
    assert len(draws) == 14 and text.endswith("\n")
    assert draws[0].startswith("level 1/2 [" + "." * 30 + "] it    1  J=")
    assert draws[11].startswith("level 1/2 [" + "#" * 6 + "." * 24 + "] it   10")  # level 1 ended: 1/5 of the work
    assert draws[12].startswith("level 2/2 [" + "#" * 6 + "." * 24 + "] it    1")
    assert draws[13].startswith("level 2/2 [" + "#" * 30 + "] it    1")
    assert "it   11" not in text and "/10" not in text
    s = Tty()
    con = cli.Console(stream=s)
    con.progress(300, 2)(1, 5, -0.5)
    con.end_bar()  # an error or Ctrl-C at iteration 5: the bar is left as it was, not drawn full
    assert s.getvalue().count("\r") == 1 and "[" + "." * 30 + "]" in s.getvalue()
    assert cli.Console(quiet=True, stream=Tty()).progress(10, 2) is None


def test_progress_bar_weighs_a_thick_slice_stack_by_its_own_levels():
    """2 x 2 x 4 mm keeps its slices at the first coarser level: that level has 1/4 of the voxels, not 1/8."""
    s = Tty()
    con = cli.Console(stream=s)
    cb = con.progress(10, 2, spacing=(4.0, 2.0, 2.0))
    cb(1, 1, -0.5)
    cb(0, 1, -0.7)  # the coarse level ended: 1/5 of the work (isotropic 3D: 1/9)
    assert "level 2/2 [" + "#" * 6 + "." * 24 + "] it    1" in s.getvalue()


def test_progress_shows_a_levels_set_up_while_it_runs():
    """The finest level's set-up (descriptors, intensity fit) took 7 s of a 1 mm brain with nothing moving."""
    s = Tty()
    con = cli.Console(stream=s)
    cb = con.progress(10, 2, spacing=(1.0, 1.0))
    cb.setup(1)  # the first level's set-up belongs to what runs before it: nothing drawn
    cb(1, 0, -0.5)
    cb(1, 1, -0.6)
    cb.setup(0)
    assert s.getvalue().endswith("\rlevel 2/2 [" + "#" * 6 + "." * 24 + "] set-up ...")
    assert "level 1/2 [" + "#" * 6 + "." * 24 + "] it    1" in s.getvalue()  # the level before, drawn done
    cb(0, 0, -0.7)
    con.end_bar(done=True)
    last = s.getvalue().replace("\n", "\r").split("\r")[-2]
    assert last.startswith("level 2/2 [" + "#" * 30 + "]"), s.getvalue()
    s = io.StringIO()  # in a log: the level's line as soon as it ends
    cb = cli.Console(stream=s).progress(10, 2)
    cb(1, 0, -0.5)
    cb(1, 3, -0.6)
    cb.setup(0)
    assert s.getvalue().startswith("priorreg: level 1/2: 3 iteration(s), J=-0.6")


def test_progress_lines_per_level_when_not_a_tty():
    s = io.StringIO()
    con = cli.Console(stream=s)
    cb = con.progress(30, 3, label="alpha=0.4 ")
    for level, n in ((2, 5), (1, 30), (0, 3)):
        for it in range(1, n + 1):
            cb(level, it, -1.0 - it / 100)
    assert s.getvalue().count("\n") == 2  # the last level's line comes when it ends
    con.end_bar()
    lines = s.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in s.getvalue()
    assert lines[0].startswith("priorreg: alpha=0.4 level 1/3: 5 iteration(s), J=-1.05, ") and lines[0].endswith(" s")
    assert lines[1].startswith("priorreg: alpha=0.4 level 2/3: 30 iteration(s), J=-1.3,")
    assert lines[2].startswith("priorreg: alpha=0.4 level 3/3: 3 iteration(s)")
    assert cli.Console(quiet=True, stream=io.StringIO()).progress(10, 2) is None


def test_progress_names_what_runs_before_the_first_level_and_the_levels_add_up(monkeypatch):
    # created at 0 s, level 1 starts at 6.5 s (the solver's iteration 0) and ends at 7.5 s; level 2's set-up
    # runs until 9 s (its iteration 0), its step ends at 9.3 s: level 2 took 1.8 s with its set-up
    clock = itertools.chain([0.0, 6.5, 7.0, 7.5, 9.0, 9.3], itertools.repeat(10.0))
    monkeypatch.setattr(cli.wf, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    s = io.StringIO()
    con = cli.Console(stream=s)
    cb = con.progress(30, 2, before="linear stage (affine) and set-up")
    for level, it in ((1, 0), (1, 1), (1, 2), (0, 0), (0, 1)):
        cb(level, it, -1.0)
    con.end_bar(done=True)
    lines = s.getvalue().splitlines()
    assert lines == ["priorreg: linear stage (affine) and set-up: 6.5 s", "priorreg: level 1/2: 2 iteration(s), J=-1, 1.0 s",
                     "priorreg: level 2/2: 1 iteration(s), J=-1, 1.8 s"]
    clock = itertools.chain([0.0, 1.0, 20.0, 40.0, 45.0, 75.0, 80.0], itertools.repeat(90.0))  # a long level, in a log
    s = io.StringIO()
    cb = cli.Console(stream=s).progress(30, 1)
    for it in range(6):
        cb(0, it, -1.0)
    assert s.getvalue().splitlines() == ["priorreg: level 1/1: 2 iteration(s), J=-1, 39.0 s so far",
                                         "priorreg: level 1/1: 4 iteration(s), J=-1, 74.0 s so far"]

    s = Tty()
    con = cli.Console(stream=s)
    cb = con.progress(30, 1, before="set-up")
    assert s.getvalue() == "\rset-up ..."  # shown while it runs
    cb(0, 0, -1.0)
    con.end_bar()  # an error in the first iteration: the bar stays as drawn, the set-up line is complete
    first, bar = s.getvalue().split("\n")[:2]
    assert first.startswith("\rset-up ...\rset-up: ") and bar.startswith("\rlevel 1/1 [" + "." * 30 + "] it    0  J=-1")
    s = Tty()
    con = cli.Console(stream=s)
    con.progress(30, 1, before="set-up")
    cli._fail(con, "bad")  # an error before the first level: its line replaces the "..." (stderr is not this stream)
    assert s.getvalue() == "\rset-up ...\r\033[K"


def test_register_calls_back_at_each_level_start_then_after_each_step():
    f, m, _, _ = synthetic.case((40, 44), synthetic.PD_NONMONO, max_disp=2.0)
    calls = []
    r = priorreg.register(f, m, levels=2, max_iterations=6, callback=lambda *a: calls.append(a[:2]))
    for h in r.history:
        mine = [it for level, it in calls if level == h.level]
        assert mine == list(range(h.iterations + 1))


def test_console_script_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "priorreg.cli", "apply", str(tmp_path / "x.nii"), "--field",
                        str(tmp_path / "f.nii.gz"), "--reference", str(tmp_path / "r.nii"), "--out",
                        str(tmp_path / "o.nii.gz")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("priorreg: error: ") and "Traceback" not in r.stderr


def test_register_warns_in_one_line_about_a_prior_with_the_modalities_swapped(capsys, tmp_path):
    # (The module's 48 x 40 phantom is too small for its two contrasts to differ to a histogram.)
    fixed, moving, _, _ = synthetic.case((96, 112), synthetic.T2_MONO, max_disp=3.0)
    lab_t = synthetic.anatomy((96, 112), seed=5)
    imgs = {"f.nii.gz": fixed, "m.nii.gz": moving, "t1.nii.gz": synthetic.contrast(lab_t, synthetic.T1, seed=40),
            "t2.nii.gz": synthetic.contrast(lab_t, synthetic.T2_MONO, seed=41)}
    for name, a in imgs.items():
        pio.write_image(priorreg.Image(a.astype(np.float32)), tmp_path / name)
    for name, order in (("right.npz", ("t1", "t2")), ("swapped.npz", ("t2", "t1"))):  # swapped: a user's slip
        assert cli.main(["train", "--fixed", str(tmp_path / f"{order[0]}.nii.gz"), "--moving",
                         str(tmp_path / f"{order[1]}.nii.gz"), "--out", str(tmp_path / name), "--bins", "32",
                         "--parzen-sigma", "1", "--levels", "2", "--quiet"]) == 0
    capsys.readouterr()
    args = [tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "--alpha", "0.4", *FAST]
    rc, so, err = run(capsys, "register", *args, "--out", tmp_path / "run", "--prior", tmp_path / "swapped.npz")
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert len(warn) == 1 and warn[0].startswith("priorreg: warning: the prior fits this pair far better"), err
    assert "Traceback" not in err and "PriorRegWarning" not in err
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["warnings"] == [warn[0].removeprefix("priorreg: warning: ")]  # as printed (it kept "register(): ")
    assert "far better with fixed and moving swapped" in (tmp_path / "run" / "report.html").read_text()
    rc, so, err = run(capsys, "register", *args, "--out", tmp_path / "ok", "--prior", tmp_path / "right.npz")
    assert rc == 0 and "warning" not in err.lower(), err


def test_a_folder_without_dicom_is_one_line_without_itks_own_warning(tmp_path):
    """ITK printed "WARNING: ... GDCMSeriesFileNames: No Series were found" and a blank line to the process's
    stderr before priorreg's own error (a subprocess, so ITK's C-level stderr is what is read)."""
    (tmp_path / "empty").mkdir()
    png = os.path.join(os.path.dirname(priorreg.__file__), "data", "brainweb", "BrainT1Slice.png")
    r = subprocess.run([sys.executable, "-m", "priorreg", "register", str(tmp_path / "empty"), png, "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"priorreg: error: fixed: {tmp_path / 'empty'} is a directory without a "
                                             "DICOM series (give an image file or a DICOM series folder)"]


def test_train_takes_the_binning_its_help_gives_per_dimension(capsys, tmp_path):
    """A 3D prior was trained with the 2D binning (64 bins, sigma 2), then overrode the 3D preset's 32 / 1.0."""
    from priorreg.options import preset_options

    rng = np.random.default_rng(0)
    vol = np.zeros((24, 24, 24), np.float32)
    vol[6:18, 6:18, 6:18] = 1.0
    for name, a in (("f.nii.gz", vol + 0.05 * rng.normal(size=vol.shape)), ("m.nii.gz", 1 - vol + 0.05 * rng.normal(size=vol.shape))):
        sitk.WriteImage(sitk.GetImageFromArray(a.astype(np.float32)), str(tmp_path / name))
    rc, _, err = run(capsys, "train", "--fixed", tmp_path / "f.nii.gz", "--moving", tmp_path / "m.nii.gz", "--out",
                     tmp_path / "p.npz", "--levels", "2")
    assert rc == 0, err
    p, three = priorreg.Prior.load(tmp_path / "p.npz"), preset_options("default", 3)
    assert (p.bins, p.parzen_sigma) == (three.bins, three.parzen_sigma) == (32, 1.0)
    # no --levels on a volume too small for the preset's 3: fewer, with a note, as register does (it was refused)
    for name in ("f", "m"):  # 10 slices: 2 levels at most
        sitk.WriteImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz"))[:, :, 7:17], str(tmp_path / f"{name}10.nii.gz"))
    rc, _, err = run(capsys, "train", "--fixed", tmp_path / "f10.nii.gz", "--moving", tmp_path / "m10.nii.gz", "--out",
                     tmp_path / "p2.npz")
    assert rc == 0 and "using --levels 2: an image of 24x24x10 voxels is too small for 3" in err, err
    assert priorreg.Prior.load(tmp_path / "p2.npz").levels == 2


def test_the_command_ends_without_teardown_after_writing_and_flushing_everything(tmp_path):
    """``python -m priorreg`` exits through os._exit once the command is done (cli.run): what it printed
    into a pipe arrives, every output is in place, and the status is the command's, on success and on error."""
    data = os.path.join(os.path.dirname(priorreg.__file__), "data", "brainweb")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "priorreg", "register", os.path.join(data, "BrainT1Slice.png"),
                        os.path.join(data, "BrainProtonDensitySlice.png"), "--out", str(out), "--levels", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("priorreg: done in") and str(out) in r.stdout  # printed into a pipe just before the exit
    names = {"warped.nii.gz", "field.nii.gz", "jacobian.nii.gz", "report.json", "report.html"}
    assert names <= set(os.listdir(out))
    rep = json.loads((out / "report.json").read_text())
    assert rep["outputs"] and any("read as grey" in n for n in rep["input_notes"])  # what reading noted, kept
    # each level's set-up and iterations, as the console's level line gives them together (they added up to
    # 73 % of the run in report.json before; a new user found the rest in no figure)
    lv = rep["levels"]
    assert all(v["setup_seconds"] > 0 and v["seconds"] > 0 for v in lv)
    assert sum(v["setup_seconds"] + v["seconds"] for v in lv) + rep["linear"]["seconds"] <= rep["seconds"]
    assert "seconds (set-up + iterations)" in (out / "report.html").read_text()
    assert "read as grey</li>" in (out / "report.html").read_text()
    r = subprocess.run([sys.executable, "-m", "priorreg", "register", str(tmp_path / "missing.png"),
                        os.path.join(data, "BrainT1Slice.png"), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("priorreg: error:"), r.stderr


def test_a_profiled_run_exits_normally_so_the_profile_is_written(tmp_path):
    """``python -m cProfile -o F -m priorreg register ...`` writes F: the command sees the profiler and exits
    through sys.exit, not os._exit (on an H100 with Python 3.12, whose cProfile is a sys.monitoring tool,
    no profile was written)."""
    data = os.path.join(os.path.dirname(priorreg.__file__), "data", "brainweb")
    prof = tmp_path / "run.prof"
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "priorreg", "register",
                        os.path.join(data, "BrainT1Slice.png"), os.path.join(data, "BrainProtonDensitySlice.png"),
                        "--out", str(tmp_path / "o"), "--quiet", *FAST], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert prof.stat().st_size > 0


def test_a_sys_monitoring_tool_counts_as_a_profiler(monkeypatch):
    class Monitoring:  # Python 3.12's sys.monitoring, with cProfile registered as tool 2 (PROFILER_ID)
        tools = {2: "cProfile"}

        def get_tool(self, i):
            return self.tools.get(i)

    monkeypatch.setattr(sys, "monitoring", Monitoring(), raising=False)
    monkeypatch.setattr(sys, "getprofile", lambda: None)
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    assert cli._observed()
    Monitoring.tools = {}
    assert not cli._observed()


def test_a_prior_sets_the_normalisation_and_the_record_says_so(capsys, data, tmp_path):
    """The images are normalised as the prior's tables were; a --normalization that differs gets a note,
    and report.json's resolved options hold the normalisation used."""
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--prior", data["prior"],
                     "--alpha", "0.5", "--normalization", "none", *FAST)
    assert rc == 0, err
    assert "--normalization none is not used: the prior was learned with percentile" in err
    rec = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rec["options"]["normalization"] == "percentile"
    said = [n for n in rec["input_notes"] if "--normalization none is not used" in n]  # kept, not only printed
    assert len(said) == 1 and f"priorreg: {said[0]}" in err


def test_a_tolerance_window_under_one_is_refused(capsys, data, tmp_path):
    assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--tolerance-window", "0"],
                 "tolerance_window must be an integer >= 1")


def test_a_thin_stack_runs_with_no_flags_and_says_how_many_levels(capsys, tmp_path):
    # 9 slices allow 2 pyramid levels where the pyramid halves them; the default's 3 refused the spinal-cord T2* stack
    rng = np.random.default_rng(1)
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.random((9, 40, 36)), 2.0).astype(np.float32)
    for spacing, levels, note in (((1.0, 1.0, 1.0), 2, True), ((7.5, 0.5, 0.5), 3, False)):
        for name, arr in (("f", f), ("m", np.roll(f, 1, axis=2) ** 2)):
            pio.write_image(priorreg.Image(arr, spacing=spacing), tmp_path / f"{name}.nii.gz")
        rc, out, err = run(capsys, "register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "--out", tmp_path / "o",
                           "--max-iterations", "5", "--overwrite")
        assert rc == 0, err
        assert ("using --levels 2: an image of 36x40x9 voxels is too small for 3" in err) == note
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        assert report["options"]["levels"] == levels
        if not note:  # 7.5 mm slices: the pyramid halves the 0.5 mm plane, never the slices
            assert [lv["shape"] for lv in report["levels"]] == [[9, 10, 9], [9, 20, 18], [9, 40, 36]]


def test_a_priors_levels_are_capped_on_a_thin_stack_like_the_presets(capsys, tmp_path):
    rng = np.random.default_rng(2)
    from scipy import ndimage

    vol = ndimage.gaussian_filter(rng.random((20, 40, 36)), 2.0)
    priorreg.fit_prior([vol], [vol ** 2], bins=32, parzen_sigma=1.0, levels=2).save(tmp_path / "p.npz")
    f = vol[:5].astype(np.float32)  # 5 slices: one level only
    for name, arr in (("f", f), ("m", f ** 2)):
        pio.write_image(priorreg.Image(arr), tmp_path / f"{name}.nii.gz")
    rc, out, err = run(capsys, "register", tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "--prior", tmp_path / "p.npz",
                       "--out", tmp_path / "o", "--max-iterations", "3")
    assert rc == 0, err
    assert "using --levels 1: an image of 36x40x5 voxels is too small for 3" in err  # the preset's 3, not the prior's 2


def test_out_names_too_long_and_demo_outs_are_refused_before_any_work(capsys, data, tmp_path):
    """A 260-byte --out name ran the whole registration, then failed at the last rename with a raw
    OSError; demo --out in /proc, under a file or empty printed FileNotFoundError / NotADirectoryError."""
    long = tmp_path / ("a" * 260)
    assert_error(capsys, ["register", data["fixed"], data["moving"], "--out", long], "is 260 bytes long")
    assert_error(capsys, ["train", "--fixed", data["fixed"], "--moving", data["moving"], "--out", f"{long}.npz"],
                 "is 264 bytes long")
    (tmp_path / "afile").write_text("x")
    assert_error(capsys, ["demo", "--out", tmp_path / "afile" / "sub"], "is a file")
    assert_error(capsys, ["demo", "--out", "/proc/priorreg-demo"], "cannot write in /proc")
    assert_error(capsys, ["demo", "--out", ""], "--out is empty")


def test_an_image_too_small_is_one_error_before_any_note_on_levels(capsys, tmp_path):
    """A new user read "using --levels 1: an image of 3x3 voxels is too small for 3", then an error."""
    for name, shape in (("tiny.nii.gz", (3, 3)), ("slab.nii.gz", (2, 30, 30))):
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random(shape).astype(np.float32)), str(tmp_path / name))
    rc, so, se = run(capsys, "register", tmp_path / "tiny.nii.gz", tmp_path / "tiny.nii.gz", "--out", tmp_path / "o")
    assert rc == 2 and se.splitlines() == [f"priorreg: error: fixed {tmp_path / 'tiny.nii.gz'} is 2D 3x3: under 4 voxels "
                                           "along an axis, which priorreg needs along every axis"]
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((1, 3, 40)).astype(np.float32)), str(tmp_path / "row.nii.gz"))
    assert_error(capsys, ["register", tmp_path / "row.nii.gz", tmp_path / "row.nii.gz", "--out", tmp_path / "o"],
                 "row.nii.gz is 2D 40x3, a single-slice 3D grid: under 4 voxels along an axis")
    assert_error(capsys, ["register", tmp_path / "slab.nii.gz", tmp_path / "slab.nii.gz", "--out", tmp_path / "o"], "3D 30x30x2: under 4")
    assert_error(capsys, ["train", "--fixed", tmp_path / "slab.nii.gz", "--moving", tmp_path / "slab.nii.gz", "--out",
                          tmp_path / "p.npz"], "fixed[0]")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p.npz").exists()


def test_pngs_of_other_sizes_are_named_as_having_no_pixel_size(tmp_path):
    from importlib.resources import files

    t1 = files("priorreg") / "data" / "brainweb" / "BrainT1Slice.png"
    pd = pio.read_image(files("priorreg") / "data" / "brainweb" / "BrainProtonDensitySlice.png")
    pio.write_image(pd.with_array(pd.array[::2, ::2].copy()), tmp_path / "half.png")
    pio.write_image(pd.with_array(pd.array[:200]), tmp_path / "cut.png")  # 217 -> 200 rows: the same pixels, cropped
    notes = []
    cli.wf.load_pair(t1, tmp_path / "half.png", None, notes)
    assert any(n.startswith("the fixed image spans 181x217 mm and the moving one 91x109 mm: the PNG or TIFF was read with 1 mm") for n in notes), notes
    notes = []
    cli.wf.load_pair(t1, tmp_path / "cut.png", None, notes)
    assert not any("spans" in n for n in notes), notes
    assert not any("holds no direction" in n for n in notes), notes
    # a PNG beside a NIfTI whose direction differs (RAS-stored slices come turned 180 degrees): said up front
    flipped = priorreg.Image(pd.array, pd.spacing, pd.origin, -np.eye(2))
    pio.write_image(flipped, tmp_path / "pd.nii.gz")
    notes = []
    cli.wf.load_pair(tmp_path / "pd.nii.gz", t1, None, notes)
    assert any(n.startswith(f"{t1} is a PNG or TIFF, whose file holds no direction") for n in notes), notes


def test_a_mistyped_flag_points_to_its_commands_help(capsys, tmp_path):
    assert_error(capsys, ["register", "f.nii.gz", "m.nii.gz", "--out", tmp_path / "o", "--bendng", "5"],
                 "unrecognized arguments: --bendng 5 (see 'priorreg register --help')")
    assert_error(capsys, ["register", "f.nii.gz", "m.nii.gz", "--linear", "sheared"],
                 "invalid choice: 'sheared' (choose from 'none', 'rigid', 'affine') (see 'priorreg register --help')")
    assert_error(capsys, ["register", "f.nii.gz", "m.nii.gz", "--bending-scale", "mm"],  # a solver internal: not in --help
                 "(choose from 'none', 'spacing', 'field_of_view') (see docs/options.md)")


def test_a_single_slice_is_described_in_the_order_a_viewer_gives(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((1, 30, 40)).astype(np.float32)),
                    str(tmp_path / "s.nii.gz"))  # 40 x 30 x 1 in ITK and 3D Slicer
    notes = []
    for role in ("fixed", "mask", "moving"):  # as register reads them
        cli.wf.load_input(tmp_path / "s.nii.gz", role, notes)
    assert notes[0] == "fixed: a single-slice 3D image; treated as 2D 40x30 (outputs on its grid are written back as single-slice 3D)"
    assert notes[1:] == [f"{role}: a single-slice 3D image; treated as 2D 40x30" for role in ("mask", "moving")]  # no outputs there


def test_a_level_line_printed_after_an_error_or_ctrl_c_says_so():
    s = io.StringIO()
    con = cli.Console(stream=s)
    cb = con.progress(30, 3)
    cb(2, 0, -0.1)
    cb(2, 1, -0.2)
    cli._fail(con, "interrupted")  # the error line itself goes to sys.stderr
    line = s.getvalue()
    assert line.startswith("priorreg: level 1/3: 1 iteration(s), J=-0.2, ") and line.count("\n") == 1
    assert line.endswith(" s (when the run stopped)\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_console_that_cannot_be_written_does_not_stop_the_run(data, tmp_path):
    """stdout closed: outputs written, then a traceback and status 1; stderr closed or its reader gone: the
    run stopped with no outputs; stdout on a full disk: status 2 after every output was written."""
    import shlex
    import subprocess

    cmd = [sys.executable, "-m", "priorreg", "register", str(data["fixed"]), str(data["moving"]), *FAST, "--out"]
    for k, redirect in enumerate([">&-", "2>&-", ">/dev/full", "2>/dev/full"]):
        out = tmp_path / f"o{k}"
        r = subprocess.run(f"{shlex.join(cmd + [str(out)])} {redirect}", shell=True, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (redirect, r.returncode, r.stderr)
        assert set(cli.OUTPUT_NAMES) <= {p.name for p in out.iterdir()}, redirect


def test_sigterm_is_one_line_and_leaves_nothing_behind(capsys, data, tmp_path, monkeypatch):
    """SIGTERM (timeout, a batch scheduler) ended the run with no word (status -15), and one arriving while the
    outputs were written left a hidden folder holding five of the six."""
    import signal
    import time

    from priorreg import workflow

    write_images = workflow.write_images

    def then_sigterm(*a, **kw):
        write_images(*a, **kw)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs in the main thread meanwhile

    monkeypatch.setattr(workflow, "write_images", then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "o", *FAST)
    assert rc == 143 and err.strip().splitlines()[-1] == "priorreg: error: terminated (SIGTERM)", err
    assert "Traceback" not in err and os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler was its own


def test_the_initial_transform_file_is_stamped_among_the_inputs(capsys, data, tmp_path, monkeypatch):
    """report.json named the file only in its options, as given (a relative path), with no size or time."""
    monkeypatch.chdir(tmp_path)
    sitk.WriteTransform(sitk.TranslationTransform(2, (1.0, 0.5)), "t.tfm")
    rc, _, err = run(capsys, "register", data["fixed"], data["moving"], "--initial-transform", "t.tfm", "--linear", "none",
                     "--out", "o", *FAST)
    assert rc == 0, err
    stamp = json.loads((tmp_path / "o" / "report.json").read_text(encoding="utf-8"))["inputs"]["initial_transform"]
    assert stamp["path"] == str(tmp_path / "t.tfm") and stamp["bytes"] == (tmp_path / "t.tfm").stat().st_size


def test_what_is_known_before_the_levels_is_printed_before_them(capsys, data, tmp_path, monkeypatch):
    """A rejected linear optimum's note and a warning known before the first level (a header's) came after
    every level line: on a long run, minutes after they were known. Each is printed once."""
    from priorreg import api, prealign
    from priorreg.transform import LinearResult

    why = "its optimum raised mutual information but worsened the MIND descriptor distance; world alignment is kept"

    def rejected(*a, **kw):
        return LinearResult(np.eye(2), np.zeros(2), kind="affine", center=np.zeros(2), rejected=True, notes=[why])

    monkeypatch.setattr(prealign, "estimate_linear", rejected)
    monkeypatch.setattr(api, "header_notes", lambda inp, lin: ["register(): the header looks turned"])
    rc, out, err = run(capsys, "register", data["fixed"], data["moving"], "--out", tmp_path / "o", "--levels", "2",
                       "--max-iterations", "3")
    lines = err.splitlines()
    noted = [i for i, ln in enumerate(lines) if ln == f"priorreg: linear stage: {why}"]
    levels = [i for i, ln in enumerate(lines) if ln.startswith("priorreg: level ")]
    assert rc == 0 and len(noted) == 1 and levels and noted[0] < levels[0], err
    assert lines[noted[0] - 1].startswith("priorreg: linear stage (affine) and set-up: "), err
    warned = [i for i, ln in enumerate(lines) if "the header looks turned" in ln]
    assert warned == [noted[0] + 1] and lines[warned[0]] == "priorreg: warning: the header looks turned", err
