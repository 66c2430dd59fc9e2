"""Presets: resolution per dimension, override order, the record in the result, and the
benchmark's use of them. Plus the API's options handling and the field-of-view fill."""
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import priorreg
from priorreg import PriorRegError, RegistrationOptions
from priorreg.options import PRESETS, preset_options



def _pair(shape=(40, 40)):
    rng = np.random.default_rng(0)
    f = np.zeros(shape)
    sl = tuple(slice(n // 4, 3 * n // 4) for n in shape)
    f[sl] = 1.0
    f += 0.05 * rng.normal(size=shape)
    return f, 1.0 - f


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_resolves_per_dimension_and_is_recorded(name):
    f, m = _pair()
    r = priorreg.register(f, m, preset=name, levels=1, max_iterations=3)
    expect = preset_options(name, 2).replace(levels=1, max_iterations=3, alpha=1.0)  # no prior: nothing to weigh
    assert r.options == expect
    assert r.preset == name and r.as_dict()["preset"] == name
    assert r.as_dict()["options"]["mind_weight"] == expect.mind_weight


def test_presets_differ_where_they_should():
    assert PRESETS["paper"][2].bending == 0 and PRESETS["paper"][2].local_weight == 0
    assert PRESETS["mr"][2].mind_weight > 0 and PRESETS["mr"][3].mind_channels > 0
    assert PRESETS["functional"][3].mind_weight == 0 and PRESETS["functional"][3].local_weight == 0
    assert PRESETS["mr"][2].bins != PRESETS["mr"][3].bins  # one rule per dimension


def test_3d_images_get_the_3d_values():
    f, m = _pair((16, 16, 16))
    r = priorreg.register(f, m, preset="mr", levels=1, max_iterations=2)
    assert r.options.bins == PRESETS["mr"][3].bins and r.options.mind_channels == PRESETS["mr"][3].mind_channels


def test_the_3d_bending_weight_is_physical_and_softer_only_in_a_small_field_of_view():
    """The weight of a brain's deformation does not move with the voxel size (BraTS 1 and 2 mm, the same
    warp in mm: best at 400 mm^2 on both); a field of view under 100 mm (a spinal-cord crop) holds a
    shorter deformation and gets less (benchmarks/README.md, "Regulariser weights in physical terms")."""
    from priorreg.deformable import bending_weight

    opts = PRESETS["default"][3]
    brain_1mm = bending_weight(opts, (1.0, 1.0, 1.0), (160, 190, 150))
    brain_2mm = bending_weight(opts, (2.0, 2.0, 2.0), (80, 95, 75))
    assert brain_1mm == brain_2mm == opts.bending == 400.0
    assert bending_weight(opts, (2.0, 2.0, 3.0), (84, 128, 19)) == 400.0  # ProstateX, 168 x 256 x 57 mm
    assert bending_weight(opts, (1.0, 1.0, 1.0), (240, 240, 8)) == 400.0  # a thin slab of a brain counts as large
    cord = bending_weight(opts, (1.0, 1.0, 1.0), (42, 60, 35))  # the cord crop: median extent 42 mm
    assert cord == pytest.approx(400.0 * 0.42 ** 2)
    assert bending_weight(opts, (1.0, 1.0, 3.0), (42, 60, 12)) == pytest.approx(cord)  # thick slices: the same crop
    assert bending_weight(opts.replace(bending_scale="spacing"), (2.0, 2.0, 2.0), (80, 95, 75)) == 1600.0
    assert bending_weight(opts.replace(bending_scale="none"), (1.0, 1.0, 1.0), (42, 60, 35)) == 400.0
    f, m = _pair((16, 20, 24))  # what a registration used is in its record (report.json's levels)
    r = priorreg.register(f, m, levels=2, max_iterations=2, nearly_aligned_stiffness=1.0, warn=False)
    used = [lv["regulariser"] for lv in r.as_dict()["levels"]]  # every level: the fixed grid's weight
    assert used == [dict(membrane=0.3, bending_mm2=pytest.approx(400.0 * 0.20 ** 2), sampled_share=1.0)] * 2


def test_the_preset_table_of_docs_options_is_the_presets():
    """docs/options.md lists, per preset and dimension, every value that differs from the defaults."""
    import re
    from dataclasses import fields

    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "options.md").read_text(encoding="utf-8")
    rows = {m[0]: m[1:] for m in re.findall(r"^\| `(\w+)` \| .* \| (.*) \| (.*) \|$", text, re.M) if m[0] in PRESETS}
    assert set(rows) == set(PRESETS)
    base = RegistrationOptions()
    for name, cells in rows.items():
        for nd, cell in zip((2, 3), cells):
            listed = {k: eval(v) for k, v in re.findall(r"`(\w+)=([^`]+)`", cell)}  # noqa: S307  (our own doc)
            want = {f.name: getattr(PRESETS[name][nd], f.name) for f in fields(base)
                    if getattr(PRESETS[name][nd], f.name) != getattr(base, f.name)}
            assert set(listed) == set(want), (name, nd)
            for k, v in want.items():
                assert listed[k] == (pytest.approx(v) if isinstance(v, float) else v), (name, nd, k)


def test_explicit_options_override_the_preset():
    f, m = _pair()
    r = priorreg.register(f, m, preset="mr", mind_weight=0.0, levels=1, max_iterations=2)
    assert r.options.mind_weight == 0.0 and r.options.local_weight == PRESETS["mr"][2].local_weight


def test_options_argument_is_not_overridden_by_a_default_alpha():
    f, m = _pair()
    prior = priorreg.fit_prior([f], [m], levels=1)
    r = priorreg.register(f, m, prior=prior, options=RegistrationOptions(alpha=0.4, levels=1, max_iterations=2))
    assert r.options.alpha == 0.4 and r.preset is None
    r = priorreg.register(f, m, prior=prior, options=RegistrationOptions(alpha=0.4, levels=1, max_iterations=2), alpha=0.7)
    assert r.options.alpha == 0.7


def test_bad_preset_requests_are_one_clear_error():
    f, m = _pair()
    with pytest.raises(PriorRegError, match="unknown preset 'fast'"):
        priorreg.register(f, m, preset="fast")
    with pytest.raises(PriorRegError, match="either preset= or options="):
        priorreg.register(f, m, preset="mr", options=RegistrationOptions())
    with pytest.raises(PriorRegError, match="options must be a RegistrationOptions, got dict"):
        priorreg.register(f, m, options={"levels": 1})


def test_the_benchmark_takes_its_settings_from_the_presets(monkeypatch):
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    monkeypatch.syspath_prepend(bench)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        monkeypatch.setenv(k, os.environ.get(k, "1"))
    monkeypatch.delenv("PRIORREG_BENCH_SET", raising=False)
    import run

    for dim, nd in (("2d", 2), ("3d", 3)):
        for preset, kind in (("mr", "2d-mr"), ("functional", run.FUNCTIONAL_KINDS[0])):
            case = {"fixed": np.zeros((8,) * nd), "kind": kind, "spacing": (1.0,) * nd}
            s = run._setting(case)
            want = preset_options(preset, nd).as_dict()
            assert all(s[k] == want[k] for k in s if k != "bending"), (dim, preset)
    sys.modules.pop("run", None)


def test_warped_is_background_outside_the_moving_field_of_view():
    f, m = _pair((40, 40))
    fixed = priorreg.Image(f)
    moving = priorreg.Image(m[:, :20].copy())  # covers the left half of the fixed grid
    r = priorreg.register(fixed, moving, levels=1, max_iterations=0, linear="none")
    assert 45 < 100 * r.fov.mean() < 55
    assert np.all(r.warped.array[~r.fov] == 0)
    assert np.allclose(r.warped.array[:, :19], m[:, :19])


def test_a_preset_that_fixes_the_prior_weight_keeps_it_and_explicit_alpha_wins(tmp_path, capsys):
    from priorreg import cli

    f, m = _pair()
    prior = priorreg.fit_prior([f], [m], levels=1)
    fixed = preset_options("atlas", 2).alpha
    assert fixed < 1 and preset_options("default", 2).alpha == 1.0  # the default leaves alpha to "auto"
    run = dict(prior=prior, levels=1, max_iterations=2, warn=False)  # auto gives a one-pair prior no weight, and warns
    r = priorreg.register(f, m, preset="atlas", **run)
    assert r.options.alpha == fixed and r.prior_weights == []  # not replaced by "auto"
    assert priorreg.register(f, m, preset="atlas", alpha=0.5, **run).options.alpha == 0.5
    assert priorreg.register(f, m, preset="atlas", alpha="auto", **run).options.alpha == "auto"
    assert priorreg.register(f, m, preset="default", **run).options.alpha == "auto"
    prior.save(tmp_path / "p.npz")
    for name, a in (("f.nii.gz", f), ("m.nii.gz", m)):
        priorreg.write_image(priorreg.Image(a.astype(np.float32)), tmp_path / name)
    args = ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--preset", "atlas", "--levels", "1",
            "--max-iterations", "2", "--out", str(tmp_path / "o")]
    assert cli.main([*args, "--prior", str(tmp_path / "p.npz")]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["options"]["alpha"] == fixed
    capsys.readouterr()
    assert cli.main([*args, "--overwrite"]) == 0  # no prior: alpha 1, as register() does, and a note says so
    assert json.loads((tmp_path / "o" / "report.json").read_text())["options"]["alpha"] == 1.0
    assert "without --prior it runs alpha 1" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite", "--alpha", "0.3"]) == 2  # an explicit alpha < 1 still needs a prior


def test_a_prior_sets_the_binning_a_preset_left_open():
    f, m = _pair((24, 24, 24))
    assert (priorreg.fit_prior([f], [m], levels=2).bins, priorreg.fit_prior([f], [m], levels=2).parzen_sigma) == (32, 1.0)
    prior = priorreg.fit_prior([f], [m], levels=2, bins=64, parzen_sigma=2.0)  # not the 3D presets' 32 / 1
    with pytest.warns(priorreg.PriorRegWarning, match="the coarsest of the 3 levels runs without it"):
        r = priorreg.register(f, m, prior=prior, alpha=0.5, max_iterations=2, linear="none")
    assert (r.options.bins, r.options.parzen_sigma, r.options.levels) == (64, 2.0, 3)  # not its levels: the preset's
    with pytest.raises(PriorRegError, match="bins"):  # given explicitly: refused, not silently changed
        priorreg.register(f, m, prior=prior, alpha=0.5, bins=32, max_iterations=2)


def test_auto_alpha_is_the_default_with_a_prior_and_is_reported(tmp_path, capsys):
    from priorreg import cli

    f, m = _pair((48, 48))
    prior = priorreg.fit_prior([f, np.roll(f, 2, 0)], [m, np.roll(m, 2, 0)], levels=2)
    prior.save(tmp_path / "p.npz")
    for name, a in (("f.nii.gz", f), ("m.nii.gz", m)):
        priorreg.write_image(priorreg.Image(a.astype(np.float32)), tmp_path / name)
    args = ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--prior", str(tmp_path / "p.npz"),
            "--out", str(tmp_path / "o"), "--max-iterations", "3", "--linear", "none"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    r = priorreg.register(f, m, prior=prior, max_iterations=3, linear="none")
    assert r.options.alpha == "auto" and len(r.prior_weights) == r.options.levels
    assert "alpha per level (auto) " in out
    page = (tmp_path / "o" / "report.html").read_text()
    n = r.options.levels
    assert f"alpha at level {n}/{n} (auto)" in page and "alpha at level 0" not in page


@pytest.mark.parametrize("kw, match", [
    (dict(bins="32"), "bins must be an integer, got '32'"),
    (dict(levels=True), "levels must be an integer, got True"),
    (dict(levels=1.5), "levels must be an integer, got 1.5"),
    (dict(regularization="0.3"), "regularization must be a finite number, got '0.3'"),
    (dict(regularization=float("inf")), "regularization must be a finite number, got inf"),
    (dict(tolerance=-1.0), "tolerance must be a number >= 0"),
    (dict(regularization=float("nan")), "regularization must be a finite number, got nan"),
    (dict(mind_dilation=0), "mind_dilation must be an integer >= 1, got 0"),
    (dict(bins=100000), "bins must be at most 1024"),  # was torch's allocator asking for 80 GB
    (dict(parzen_sigma=-0.5), "parzen_sigma must be a number >= 0, got -0.5"),
    (dict(force="fast"), "force must be 'exact' or 'practical', got 'fast'"),
    (dict(linear="similarity"), "linear must be 'none', 'rigid' or 'affine', got 'similarity'"),
    (dict(dtype="float16"), "dtype must be 'float32' or 'float64', got 'float16'"),
    (dict(bending_scale="mm"), "bending_scale must be 'none', 'spacing' or 'field_of_view', got 'mm'"),
    (dict(prior_floor=0.0), "prior_floor must be a number > 0, got 0.0"),
    (dict(max_samples=-5), "max_samples must be 0 .every voxel. or at least 1000"),
    (dict(step_voxels=2.0, max_step_voxels=1.0), "need 0 < step_voxels <= max_step_voxels, got 2.0 and 1.0"),
])
def test_options_of_the_wrong_type_are_one_clear_error(kw, match):
    """They were TypeErrors deep in the engine, an infinite energy at level 2, or accepted (tolerance -1)."""
    f, m = _pair()
    with pytest.raises(PriorRegError, match=match):
        priorreg.register(f, m, **kw)


def test_integral_numbers_and_binary_images_are_taken_as_they_mean():
    f, m = _pair()
    r = priorreg.register(f, m, bins=32.0, levels=np.int64(1), max_iterations=3, linear="none", warn=False)
    assert r.options.bins == 32 and type(r.options.bins) is int and r.options.levels == 1
    r = priorreg.register(f > 0.5, m > 0.5, levels=1, max_iterations=3, linear="none", warn=False)  # booleans as 0/1
    assert np.isfinite(r.field).all()
    with pytest.raises(PriorRegError, match="fixed must hold real numbers, got dtype complex128"):
        priorreg.register(f + 1j * f, m)
    with pytest.raises(PriorRegError, match=r"fixed is text .* priorreg.read_image"):
        priorreg.register("fixed.nii.gz", m)
    import pathlib  # other objects were 'dtype object' or, a SimpleITK image, 'an array of shape (39277,)'
    for obj, said in ((None, "is None; give an array"), (pathlib.Path("f.nii.gz"), r"is a path \(f.nii.gz\); read the file"),
                      (sitk.GetImageFromArray(f), "is a SimpleITK image; read its file with priorreg.read_image")):
        with pytest.raises(PriorRegError, match=f"register\\(\\): moving {said}"):
            priorreg.register(f, obj)
    with pytest.raises(PriorRegError, match=r"moving is a numpy masked array, whose mask priorreg does not read"):
        priorreg.register(f, np.ma.masked_less(m, 0.2))  # the mask was dropped without a word
    with pytest.raises(PriorRegError, match=r"moving has shape \(1, 40, 40\); .*give the 2D array, e.g. np.squeeze"):
        priorreg.register(f, m[None])
    with pytest.raises(PriorRegError, match="field must hold finite real numbers"):
        priorreg.warp(m, np.full((2, *m.shape), np.nan))
    with pytest.raises(PriorRegError, match="fill must be a finite number or None, got '0'"):
        priorreg.warp(m, np.zeros((2, *m.shape)), fill="0")


def test_fit_prior_checks_its_binning_like_register_and_names_itself():
    f, m = _pair()
    assert priorreg.fit_prior([f], [m], bins=32.0, levels=1).bins == 32
    with pytest.raises(PriorRegError, match=r"^fit_prior\(\): parzen_sigma must be a finite number, got '1'"):
        priorreg.fit_prior([f], [m], parzen_sigma="1")
    with pytest.raises(PriorRegError, match=r"^fit_prior\(\): bins must be an integer >= 4, got 0"):
        priorreg.fit_prior([f], [m], bins=0)


def test_api_arguments_of_the_wrong_kind_name_themselves(tmp_path):
    """Each was a raw TypeError, ValueError, LinAlgError or FileNotFoundError naming a temporary file."""
    from priorreg import Image, io as pio

    f, m = _pair()
    cases = [
        (lambda: Image(f, direction=np.zeros((2, 2))), r"direction must be an invertible 2 x 2 matrix"),
        (lambda: Image(f, origin="0"), r"origin must be numbers, got the text '0'"),
        # a NIfTI affine's matrix as direction: registered with 3 x 2 mm steps, written to NIfTI with 1 x 1
        (lambda: Image(f, (3.0, 2.0), direction=np.diag([3.0, 2.0])), r"columns must be unit vectors .* \[3.0, 2.0\]"),
        # axes not perpendicular: NIfTI wrote another grid, silently (MHA and NRRD keep it)
        (lambda: pio.write_image(Image(f, direction=[[1, 0.6], [0, 0.8]]), tmp_path / "s.nii.gz"),
         r"NIfTI cannot keep a direction whose axes are not perpendicular"),
        (lambda: priorreg.register(f, m, spacing="1,1"), r"spacing must be numbers, got the text '1,1'"),
        (lambda: priorreg.register(f, m, callback=5), r"callback must be a function"),
        (lambda: Image(f, (3.0,)), r"spacing needs 2 values for a 2D image, got 1"),  # was taken as (3, 3)
        # one argument: a TypeError from inside the solver, after the linear stage had run
        (lambda: priorreg.register(f, m, callback=lambda e: None), r"callback must be a function of \(level, iteration"),
        # complex: register refused it, warp dropped the imaginary part with numpy's warning
        (lambda: priorreg.warp(f + 1j * f, np.zeros((2, *f.shape))), r"warp\(\): moving must hold real numbers"),
        (lambda: pio.read_image(5), r"must be a file path, got int"),
        (lambda: pio.write_image(f, tmp_path / "x.nii.gz"), r"write_image\(\) takes a priorreg.Image"),
        (lambda: priorreg.fit_prior([f], [m], levels=1).save(tmp_path / "no" / "p.npz"), r"the folder .*no does not exist"),
    ]
    for call, match in cases:
        with pytest.raises(PriorRegError, match=match):
            call()
    sheared = Image(f, direction=[[1, 0.6], [0, 0.8]])
    pio.write_image(sheared, tmp_path / "s.mha")
    assert pio.read_image(tmp_path / "s.mha").same_grid(sheared) and not (tmp_path / "s.nii.gz").exists()


def test_a_bad_initial_field_says_what_is_wrong_with_it():
    """A NaN field said 'must be a finite array of shape (2, 40, 40), got (2, 40, 40)'."""
    f, m = _pair()
    with pytest.raises(PriorRegError, match=r"initial_field holds 1 NaN/Inf value\(s\)"):
        bad = np.zeros((2, 40, 40))
        bad[0, 3, 3] = np.nan
        priorreg.register(f, m, initial_field=bad)
    with pytest.raises(PriorRegError, match=r"initial_field must have shape \(2, 40, 40\), got \(2, 40\)"):
        priorreg.register(f, m, initial_field=np.zeros((2, 40)))


def test_numpy_numbers_as_options_become_python_numbers_and_the_record_is_json():
    import json

    opts = RegistrationOptions(regularization=np.float32(0.3), alpha=np.float64(0.5), levels=np.int64(2))
    assert type(opts.regularization) is float and type(opts.alpha) is float and type(opts.levels) is int
    json.dumps(opts.as_dict())  # raised TypeError: float32 is not JSON serializable
    with pytest.raises(PriorRegError, match="alpha must be a number"):
        RegistrationOptions(alpha=True)


def test_a_bending_weight_the_user_gives_is_used_as_given():
    """The presets' rules scale the presets' weight; 25 mm^2 asked for on a cord crop was used as 7.6."""
    f, m = _pair((16, 20, 24))  # a 20 mm field of view: the 3D rule would take 0.04 of a weight
    kw = dict(levels=1, max_iterations=2, nearly_aligned_stiffness=1.0, warn=False)
    r = priorreg.register(f, m, bending=25.0, **kw)
    assert r.options.bending_scale == "none" and r.as_dict()["levels"][0]["regulariser"]["bending_mm2"] == 25.0
    r = priorreg.register(f, m, bending=25.0, bending_scale="field_of_view", **kw)  # both given: the rule applies
    assert r.as_dict()["levels"][0]["regulariser"]["bending_mm2"] == pytest.approx(25.0 * 0.2 ** 2)
    f2, m2 = _pair((40, 40))
    r = priorreg.register(f2, m2, spacing=(2.0, 2.0), bending=30.0, **kw)  # 2D's per-voxel rule: not on a given weight
    assert r.as_dict()["levels"][0]["regulariser"]["bending_mm2"] == 30.0
    r = priorreg.register(f2, m2, spacing=(2.0, 2.0), options=PRESETS["default"][2].replace(bending=30.0), **kw)
    assert r.as_dict()["levels"][0]["regulariser"]["bending_mm2"] == 120.0  # options= is taken as it is


def test_a_pet_or_spect_file_gets_the_functional_preset_unless_one_is_asked_for(tmp_path, capsys):
    """The default preset's local terms and affine stage hurt PET and SPECT (README, Presets): with no
    preset, an image whose file says PT or NM runs "functional", and the library, the command line and
    report.json say why; an asked-for preset, or options=, is kept."""
    from priorreg import cli

    f, m = _pair()
    pet = priorreg.Image(m, modality="PT")
    with pytest.warns(priorreg.PriorRegWarning, match="the moving image is a PET image .*using preset functional"):
        r = priorreg.register(f, pet, levels=1, max_iterations=2)
    assert r.preset == "functional" and r.options.linear == preset_options("functional", 2).linear
    assert "Modality PT" in r.as_dict()["preset_note"]
    for kw in (dict(preset="default"), dict(options=preset_options("default", 2))):
        kept = priorreg.register(f, pet, levels=1, max_iterations=2, **kw)
        assert kept.preset_note is None and kept.options.mind_weight == preset_options("default", 2).mind_weight
    assert priorreg.register(f, priorreg.Image(m, modality="MR"), levels=1, max_iterations=2).preset == "default"
    # as a user types it: "pt" ran the default preset (an API new-user pass)
    assert priorreg.register(f, priorreg.Image(m, modality=" pt"), levels=1, max_iterations=2, warn=False).preset == "functional"

    for name, a in (("ct.nii.gz", f), ("spect.nii.gz", m)):
        priorreg.write_image(priorreg.Image(a.astype(np.float32)), tmp_path / name)
    (tmp_path / "spect.json").write_text('{"Modality": "NM"}', encoding="utf-8")  # as dcm2niix writes it
    args = ["register", str(tmp_path / "ct.nii.gz"), str(tmp_path / "spect.nii.gz"), "--levels", "1",
            "--max-iterations", "2", "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("SPECT") == 1 and "give --preset default for the MR settings" in err  # a note, not twice
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["preset"] == "functional" and "Modality NM" in report["preset_note"]
    assert report["options"]["mind_weight"] == 0
    assert cli.main([*args, "--overwrite", "--preset", "default"]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["preset_note"] is None


def test_a_presets_variant_for_the_other_dimension_is_named():
    """PRESETS["default"][3] on a 2D pair ran with 32 bins and the 3D bending rule without a word."""
    f, m = _pair()
    with pytest.warns(priorreg.PriorRegWarning, match="options= is the 3D variant of preset 'default', but the images are 2D"):
        priorreg.register(f, m, options=PRESETS["default"][3], levels=1, max_iterations=2)
    r = priorreg.register(f, m, options=PRESETS["default"][2], levels=1, max_iterations=2, warn=False)
    assert not [w for w in r.warnings if "variant" in w]
    # the 3D variant with a setting changed ran as silently; a 2D variant with the 3D bins is the user's choice
    with pytest.warns(priorreg.PriorRegWarning, match="holds most settings of the 3D variant of preset 'default'"):
        priorreg.register(f, m, options=preset_options("default", 3).replace(levels=1), max_iterations=2)
    r = priorreg.register(f, m, options=preset_options("default", 2).replace(levels=1, bins=32), max_iterations=2, warn=False)
    assert not [w for w in r.warnings if "variant" in w]
    from priorreg.checks import other_dimension_notes  # the bare engine shares many 2D values: no preset's variant

    assert other_dimension_notes(preset_options("default", 2).replace(levels=2), 3, "register()")
    assert not other_dimension_notes(RegistrationOptions(), 3, "register()")
    assert not other_dimension_notes(RegistrationOptions(bins=32, mind_channels=3), 3, "register()")
    assert other_dimension_notes(preset_options("atlas", 2), 3, "register()")  # the variant itself, though it differs in one
    assert not other_dimension_notes(RegistrationOptions(bending_scale="spacing"), 3, "register()")  # one value: atlas 2D's
    assert not other_dimension_notes(preset_options("paper", 3).replace(bending_scale="spacing"), 3, "register()")
