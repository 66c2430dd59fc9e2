"""The HTML report: its panels in order, each picture a PNG composed without a plotting library
(no matplotlib in the process), the moving field of view outlined, colour scales and plots."""
import base64
import dataclasses
import io
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy.stats import rankdata

import priorreg
import synthetic
from priorreg import pictures as pic
from priorreg import report
from priorreg.image import Image

TITLES = ["Checkerboard: fixed / moving", "Fixed-image edges over the moving image", "Difference images",
          "Deformation", "Joint intensity histograms", "Energy"]
COLUMNS = {"Checkerboard: fixed / moving": 2,
           "Fixed-image edges over the moving image": 2, "Difference images": 3, "Deformation": 2}


def pictures(body) -> list:
    """[(alt text, RGB array)] of the PNGs in an HTML fragment, in order."""
    out = []
    for alt, b64 in re.findall(r"<img alt='([^']*)'[^>]*src='data:image/png;base64,([^']+)'", body):
        raw = base64.b64decode(b64)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        out.append((alt, np.asarray(PILImage.open(io.BytesIO(raw)).convert("RGB"))))
    return out


def images(body) -> list:
    """The pictures of ``body`` without its colour bars."""
    return [a for alt, a in pictures(body) if alt != "colour scale"]


def has(rgb, colour) -> bool:
    return bool((rgb == np.asarray(colour, np.uint8)).all(-1).any())


@pytest.fixture(scope="module")
def half():
    """A 2D pair whose moving image covers the left half of the fixed grid (same spacing and origin)."""
    lab = synthetic.anatomy((48, 48), seed=0)
    fixed = Image(synthetic.contrast(lab, synthetic.T1), (1.0, 1.0))
    moving = Image(synthetic.contrast(lab, synthetic.PD_NONMONO, seed=3)[:, :24], (1.0, 1.0))
    return priorreg.register(fixed, moving, levels=1, max_iterations=3, linear="none", warn=False)


@pytest.fixture(scope="module")
def volume():
    lab = synthetic.anatomy((14, 18, 12), seed=1)
    fixed = Image(synthetic.contrast(lab, synthetic.T1), (2.0, 1.0, 1.5))
    moving = Image(synthetic.contrast(lab, synthetic.T2_MONO, seed=4), (2.0, 1.0, 1.5))
    return priorreg.register(fixed, moving, levels=1, max_iterations=2, linear="none", warn=False)


@pytest.mark.parametrize("case", ["half", "volume"])
def test_every_panel_in_order_with_its_pictures(case, request):
    result = request.getfixturevalue(case)
    data = report._Data(result)
    titles = TITLES
    drawn = [f for f in (panel(data) for panel in report.PANELS) if f is not None]
    assert [t for t, _, _ in drawn] == titles and all(caption for _, caption, _ in drawn)
    for t, _, body in drawn:
        if t in COLUMNS:  # one picture per view and column, each at least 256 pixels on its longer side
            shown = images(body)
            assert len(shown) == COLUMNS[t] * len(data.views), t
            assert all(max(a.shape[:2]) >= 256 and a.shape[2] == 3 for a in shown), t
    hist = images(drawn[titles.index("Joint intensity histograms")][2])
    assert len(hist) == 2 and all(a.shape == (256, 256, 3) for a in hist)  # 64 bins, enlarged 4 times
    energy = drawn[titles.index("Energy")][2]
    assert energy.count("<svg") == 2 and "<polyline" in energy and "level 1/" in energy
    assert [t for t, _, _ in report.figures(result)] == titles


def test_the_linear_stage_is_the_checkerboard_s_middle_column():
    """Where the linear stage ran, the checkerboard shows before, after it alone, and after registration; its
    own panel repeated the "before" picture (a 768 x 768 slice's report was 6 MB)."""
    lab = synthetic.anatomy((40, 40), seed=2)
    fixed = Image(synthetic.contrast(lab, synthetic.T1), (1.0, 1.0))
    moving = Image(synthetic.contrast(lab, synthetic.T2_MONO, seed=5), (1.0, 1.0))
    result = priorreg.register(fixed, moving, levels=1, max_iterations=2, linear="rigid", warn=False)
    data = report._Data(result)
    title, caption, body = report.panel_checkerboard(data)
    assert "after the rigid stage alone" in caption and "world alignment" in caption
    assert re.findall(r"<div class='head'>([^<]*)</div>", body) == ["before", "after the rigid stage", "after registration"]
    shown = images(body)
    assert len(shown) == 3 and not any((a == b).all() for i, a in enumerate(shown) for b in shown[i + 1:])
    page = report.render_html(result, report.report_dict(result))
    assert sum(p.tobytes() == shown[0].tobytes() for _, p in pictures(page)) == 1  # "before" drawn once
    bare = dataclasses.replace(result, moving=None)  # a result without its moving image: no middle column
    assert len(images(report.panel_checkerboard(report._Data(bare))[2])) == 2
    rows = dict(report._linear_rows(result.linear, report._linear_name(result)))
    assert re.fullmatch(r"-?\d+\.\d\d deg", rows["linear stage (rigid): rotation"])  # 2D: one signed angle


def test_an_initial_transform_used_as_given_is_not_called_a_stage(tmp_path):
    """--linear none --initial-transform: the report said "linear stage (rigid)" and "after the rigid stage
    alone" beside options saying linear none."""
    import SimpleITK as sitk

    lab = synthetic.anatomy((40, 40), seed=2)
    fixed = Image(synthetic.contrast(lab, synthetic.T1), (1.0, 1.0))
    moving = Image(synthetic.contrast(lab, synthetic.T2_MONO, seed=5), (1.0, 1.0))
    sitk.WriteTransform(sitk.TranslationTransform(2, (1.5, -2.0)), str(tmp_path / "t.tfm"))
    result = priorreg.register(fixed, moving, levels=1, max_iterations=2, linear="none", warn=False,
                               initial_transform=str(tmp_path / "t.tfm"))
    title, caption, body = report.panel_checkerboard(report._Data(result))
    assert "after the initial transform (rigid) alone" in caption and "rigid stage" not in caption
    rows = dict(report._linear_rows(result.linear, report._linear_name(result)))
    assert rows["initial transform: translation (world LPS)"] == "1.50 mm, -2.00 mm" and not any("stage" in k for k in rows)


def test_views_are_mid_slices_with_the_pixel_aspect():
    (v,) = report._views(priorreg.Image(np.zeros((10, 20)), (1.0, 0.5)))
    assert v.title == "" and v.axes == (0, 1) and v.aspect == 2.0 and v.flips == (False, False)
    views = report._views(priorreg.Image(np.zeros((14, 18, 12)), (2.0, 1.0, 1.5)))
    assert [v.title for v in views] == ["axial slice k=7 of 14; top A, left R",  # array axes 0, 1, 2 are k, j, i
                                        "coronal slice j=9 of 18; top S, left R",
                                        "sagittal slice i=6 of 12; top S, left A"]
    assert [v.aspect for v in views] == pytest.approx([1 / 1.5, 2 / 1.5, 2.0])
    c, s_ = np.cos(np.radians(25)), np.sin(np.radians(25))  # tilted 25 degrees about x: named by the nearest plane
    tilted = report._views(priorreg.Image(np.zeros((14, 18, 12)), (2.0, 1.0, 1.5), direction=np.array([[0, 0, 1], [-s_, c, 0], [c, s_, 0]])))
    assert tilted[0].title.startswith("axial (oblique, 25 deg) slice k=7 of 14"), tilted[0].title
    assert "oblique" not in tilted[2].title  # the sagittal view's normal is x itself: turned within its plane only
    assert np.zeros((14, 18, 12))[views[1].sl].shape == (14, 12)


@pytest.mark.parametrize("order, signs", [((2, 1, 0), (1, -1, -1)),  # a RAS+ NIfTI as ITK reads it
                                          ((2, 1, 0), (-1, 1, 1)),  # LPS stored upside down
                                          ((0, 2, 1), (1, -1, 1)),  # stored sagittal first (x, z, y)
                                          ((1, 0, 2), (1, 1, -1))])  # coronal first (y, x, z)
def test_views_show_anatomy_as_viewers_do_whatever_the_storage_order(order, signs):
    """Pictures were drawn in array order: a coronal slice of an LPS-stored brain was upside down, and a
    volume stored sagittal first lay on its side. Superior up (axial: anterior up), the patient's left
    (LPS +x) to the right, and on a sagittal slice posterior to the right."""
    direction = np.zeros((3, 3))
    for k, (w, sgn) in enumerate(zip(order, signs)):
        direction[w, k] = sgn  # array axis k runs along world axis w
    img = priorreg.Image(np.zeros((6, 7, 8)), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    world = np.einsum("ij,j...->i...", direction, np.indices(img.shape).astype(float))  # (x, y, z) of each voxel
    for v in report._views(img):
        normal = next(w for w in range(3) if np.ptp(v.take(world[w])) == 0)
        up, right = {0: (2, 1), 1: (2, 0), 2: (1, 0)}[normal]  # sagittal: z up, y right; coronal: z, x; axial: y, x
        rows, cols = np.diff(v.take(world[up]), axis=0), np.diff(v.take(world[right]), axis=1)
        assert np.all(rows < 0) if up == 2 else np.all(rows > 0)  # down from superior; axial: down to posterior
        assert np.all(cols > 0) and v.take(world[0]).shape == v.take(img.array).shape
        plane, sides = {0: ("sagittal", "top S, left A"), 1: ("coronal", "top S, left R"), 2: ("axial", "top A, left R")}[normal]
        assert v.title.startswith(plane) and v.title.endswith(sides), v.title  # the patient's side at each edge


def test_pictures_keep_the_physical_proportions(volume):
    # spacing (2, 1, 1.5) mm: the view of array axes (0, 2) is 14*2 = 28 mm by 12*1.5 = 18 mm
    data = report._Data(volume)
    shown = images(report.panel_checkerboard(data)[2])
    for v, rgb in zip(data.views, shown[::2]):
        h, w = v.take(data.fixed).shape
        mm = (h * volume.fixed.spacing[v.axes[0]], w * volume.fixed.spacing[v.axes[1]])
        assert rgb.shape[0] / rgb.shape[1] == pytest.approx(mm[0] / mm[1], rel=0.03)


def test_report_renders_without_matplotlib(tmp_path):
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import priorreg, synthetic\n"
        "from priorreg import report\n"
        "from priorreg.image import Image\n"
        "lab = synthetic.anatomy((32, 32), seed=0)\n"
        "f = Image(synthetic.contrast(lab, synthetic.T1), (1.0, 1.0))\n"
        "m = Image(synthetic.contrast(lab, synthetic.T2_MONO, seed=1), (1.0, 1.0))\n"
        "r = priorreg.register(f, m, levels=1, max_iterations=2, linear='rigid', warn=False)\n"
        f"report.write_html({str(tmp_path / 'report.html')!r}, r, report.report_dict(r))\n"
        "print('matplotlib' in sys.modules, 'PIL' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["False", "True"], r.stdout
    page = (tmp_path / "report.html").read_bytes().decode("ascii")  # readable whatever encoding is assumed
    assert page.count("data:image/png;base64,") >= 13 and page.count("<svg") == 2


def test_fov_percentage_when_the_moving_image_covers_half(half):
    fov = report.field_of_view(half)
    pct = report.percent_outside(fov)  # about half: the field (3 iterations) moves the border by a fraction of a pixel
    assert fov.shape == half.fixed.shape and pct == pytest.approx(50.0, abs=0.5)
    html = report.render_html(half, report.report_dict(half))
    assert f"<td>fixed grid outside the moving field of view</td><td>{pct:.1f}%</td>" in html
    assert f"{pct:.1f}% of the fixed grid lies outside it" in html  # the checkerboard's caption, beside its outline
    data = report._Data(half)
    for panel in (report.panel_checkerboard, report.panel_edges):
        before, after = images(panel(data)[2])
        assert has(after, report.FOV_RGB) and not has(before, report.FOV_RGB), panel.__name__
        # the outline runs down the middle of the 'after' picture (the moving image's right border)
        per_col = (after == report.FOV_RGB).all(-1).sum(0)  # weighted: a short jog at a corner is not the line
        assert abs((per_col * np.arange(len(per_col))).sum() / per_col.sum() - after.shape[1] / 2) <= 2


def test_the_moving_pictures_are_black_outside_the_moving_image():
    """A moving image with a negative background (CT-like) covering the left half of the fixed grid: its fill
    outside (0) was drawn grey, as if it were data, before and after registration and after the linear stage."""
    lab = synthetic.anatomy((48, 48), seed=0)
    fixed = Image(synthetic.contrast(lab, synthetic.T1), (1.0, 1.0))
    moving = synthetic.contrast(lab, synthetic.PD_NONMONO, seed=3)[:, :24] * 1000 - 1000
    result = priorreg.register(fixed, Image(moving, (1.0, 1.0), origin=(0.0, 2.0)), levels=1, max_iterations=3,
                               linear="rigid", warn=False)  # on another grid: 2 mm along
    shown = images(report.panel_edges(report._Data(result))[2])  # the moving image under the fixed edges
    assert len(shown) == 2
    for a in shown + [report._Data(result).linear_only(report._Data(result).views[0])]:
        right = a[:, a.shape[1] * 7 // 8:]  # beyond the moving image, whatever the linear stage did
        grey = right if right.ndim == 2 else right[(right[..., 0] == right[..., 1]) & (right[..., 1] == right[..., 2])]
        assert grey.size and (grey == 0).all()
    for a in images(report.panel_differences(report._Data(result))[2]):  # a difference there is the fill's
        no_data = (a == report.NO_DATA_RGB).all(-1)
        assert no_data[:, a.shape[1] * 7 // 8:].all() and no_data[:, : a.shape[1] // 4].mean() < 0.5


def test_fov_is_where_the_field_lands_inside_the_moving_image():
    # a shift of half the grid (32 mm along array axis 1) sends the right half of the fixed grid outside
    from priorreg.resample import field_of_view

    fixed = Image(np.zeros((40, 64)), (1.0, 1.0))
    field = np.zeros((2, 40, 64))
    field[1] = 32.0
    fov = report.field_of_view(types.SimpleNamespace(fov=field_of_view(fixed, fixed, field)))
    assert fov[:, :32].all() and not fov[:, 32:].any()
    assert report.percent_outside(fov) == pytest.approx(50.0)
    assert report.percent_outside(report.field_of_view(types.SimpleNamespace(fov=None))) is None


def test_full_fov_draws_no_outline(volume):
    data = report._Data(volume)
    assert report.percent_outside(data.fov) == 0.0 and data.fov_outline is None
    assert "lies outside it" not in report.panel_checkerboard(data)[1]
    assert not any(has(a, report.FOV_RGB) for a in images(report.panel_checkerboard(data)[2]))


def test_edges_are_red_and_the_grid_lines_yellow(half):
    data = report._Data(half)
    for shown in images(report.panel_edges(data)[2]):  # the edges, blended at 0.9 over the grey image
        assert ((shown[..., 0] > 200) & (shown[..., 1] < 80) & (shown[..., 2] < 80)).mean() > 0.01
    grid, _ = images(report.panel_deformation(data)[2])
    assert (grid == report.GRID_RGB).all(-1).mean() > 0.02


def test_jacobian_colours_white_at_one_black_where_folding():
    # det = -1 (folding), 0.5 (shrinking), 1 (kept), 3 (growing). Top of the scale: max(2, 99.5th percentile),
    # the percentile at position 0.995 * 3 = 2.985 of the sorted values: 1 + 0.985 * (3 - 1) = 2.97.
    jac = np.array([[-1.0, 0.5, 1.0, 3.0]])
    data = types.SimpleNamespace(result=types.SimpleNamespace(jacobian=jac))
    draw, bar = report._draw_jacobian(data)
    (v,) = report._views(priorreg.Image(jac))
    rgb = draw(v, jac.shape)[0]
    assert tuple(rgb[0]) == (0, 0, 0) and np.abs(rgb[2].astype(int) - 247).max() <= 2  # the map's white, 247
    assert rgb[1, 2] > rgb[1, 0] and rgb[3, 0] > rgb[3, 2]  # blue below 1, red above
    assert "<span>1</span>" in bar and "2.97</span>" in bar


def test_alpha_rows_in_the_summary():
    rows = report._alpha_rows([{"level": 1, "alpha": 0.5, "reason": "prior fits"}, {"level": 0, "alpha": 1.0}], 2)
    assert rows == [("alpha at level 1/2 (auto)", "0.50: prior fits"), ("alpha at level 2/2 (auto)", "1.00: ")]


def test_enlarge_outline_and_display_shape():
    a = np.arange(6).reshape(2, 3)
    assert (pic.enlarge(a, (4, 6)) == np.kron(a, np.ones((2, 2), int))).all()  # whole factors repeat pixels
    assert pic.display_shape((10, 20), 2.0) == (260, 260)  # 20 columns * 13 >= 256; rows twice as tall
    assert pic.display_shape((300, 100), 1.0) == (300, 100)  # large enough already
    m = np.zeros((4, 6), bool)
    m[:, :3] = True
    assert (pic.outline(m) == np.isin(np.arange(6), (2, 3))[None].repeat(4, 0)).all()


def test_pictures_are_stored_losslessly_in_the_smallest_cheap_mode():
    """Grey pictures as one channel, few-coloured ones with a palette, the rest RGB; each decodes to the
    same pixels (RGB throughout made a 768 x 768 slice's report 5.1 MB)."""
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (30, 40, 1), dtype=np.uint8), 3, axis=2)
    outlined = grey.copy()
    outlined[5, :] = (0, 255, 255)  # grey levels and a cyan line: a palette, if 256 colours at most
    outlined[outlined[..., 0] == 7] = (8, 8, 8)
    full = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for rgb, mode in ((grey, "L"), (outlined, "P"), (full, "RGB")):
        im = PILImage.open(io.BytesIO(base64.b64decode(pic.png_base64(rgb))))
        assert im.mode == mode and (np.asarray(im.convert("RGB")) == rgb).all(), mode


def test_draw_lines_leaves_no_gaps_and_cuts_at_nan():
    rgb = np.zeros((20, 20, 3), np.uint8)
    diagonal = np.array([[[0.0, 0.0], [19.0, 19.0]]])
    out = pic.draw_lines(rgb, diagonal, (255, 0, 0))
    assert (out[..., 0] > 0).any(1).all() and (out[..., 0] > 0).any(0).all()
    cut = np.array([[[0.0, 0.0], [np.nan, np.nan], [19.0, 19.0]]])
    assert not pic.draw_lines(rgb, cut, (255, 0, 0)).any()


def test_colour_maps_and_ticks():
    assert np.abs(pic.DIVERGING[127:129].astype(int) - 247).max() <= 2 and tuple(pic.SEQUENTIAL[0]) == (0, 0, 4)
    assert pic.colour(np.array([-5.0, 0.0, 1.0, 7.0, np.nan]), 0.0, 1.0, pic.GREY)[:, 0].tolist() == [0, 0, 255, 255, 0]
    assert pic.nice_ticks(-0.47, 0.12) == pytest.approx([-0.4, -0.2, 0.0])
    svg = pic.svg_plot([(np.arange(4), np.array([1.0, np.nan, 2.0, 3.0]), "#000000", "a")], title="t", xlabel="x")
    assert svg.count("<polyline") == 2 and ">a</text>" in svg


def test_rank_difference_is_scipy_rankdata():
    rng = np.random.default_rng(3)
    f = rng.integers(0, 5, (6, 7, 8)).astype(float)  # many ties
    m = rng.random((6, 7, 8))
    diff = report._rank_diff(f, m)

    def ranks(a):
        return ((rankdata(a.ravel(), method="average") - 1) / (a.size - 1)).reshape(a.shape)

    for v in report._views(priorreg.Image(f)):  # values within 1e-4 of the range count as ties: at most a rank apart
        assert np.abs(diff(v) - v.take(np.abs(ranks(f) - ranks(m)))).max() <= 1.0 / (f.size - 1)


def test_one_far_outlier_does_not_make_every_value_a_tie():
    """The tie window was a share of the whole range: one voxel at 1e7 made every rank about 0.5."""
    a = np.random.default_rng(0).random((64, 64)) * 1000
    a[0, 0] = 1e7
    exact = (rankdata(a.ravel(), method="average") - 1) / (a.size - 1)
    assert np.abs(report._ranker(a)(a.ravel()) - exact).max() < 2e-3


def test_an_interpolated_constant_background_ranks_with_the_constant():
    """A z-scored image's constant background (-5.61) warped: -5.61 + 1e-5 here and there ranked at the top
    of the background's ties instead of its middle, and the 'after' panel showed speckle where nothing moved."""
    before = np.full((20, 20), -5.61391)
    before[5:15, 5:15] = np.linspace(-1, 3, 100).reshape(10, 10)
    after = before.copy()
    after[0, ::2] += 1e-5  # interpolation rounding in the background
    fixed = before * 2 + 1
    diff = report._rank_diff(fixed, after)
    v = report._views(priorreg.Image(fixed))[0]
    assert diff(v).max() < 0.02


def test_deformed_grid_lines_move_the_way_a_flipped_view_shows_its_axis(monkeypatch):
    """A view shown upside down shows a displacement along its rows reversed; the lines were drawn unflipped."""
    img = priorreg.Image(np.zeros((6, 7, 8)))  # array axis 0 along world +z: coronal and sagittal rows flipped
    field = np.zeros((3, 6, 7, 8))
    field[0] = 2.0  # 2 voxels along array axis 0 (superior)
    seen = []
    monkeypatch.setattr(report, "_warped_lines", lambda ur, uc, size: seen.append((ur.mean(), uc.mean())) or [])
    d = types.SimpleNamespace(scaled=[None, None, np.zeros((6, 7, 8))], result=types.SimpleNamespace(field=field),
                              spacing=(1.0, 1.0, 1.0))
    draw = report._draw_grid_lines(d)
    axial, coronal, sagittal = report._views(img)
    assert coronal.flips[0] and sagittal.flips[0]
    for v in (coronal, sagittal):
        draw(v, (12, 16))
    assert seen == [(-2.0, 0.0), (-2.0, 0.0)]  # up the screen, as superior is shown


def test_after_minus_before_is_zero_where_the_registration_changed_nothing():
    """before and after were each normalised on their own: the after image's fill outside the field of view
    moved its percentiles, and the panel showed an offset over the whole unchanged background."""
    rng = np.random.default_rng(0)
    moving = np.full((40, 40), -5.6)
    moving[8:32, 8:32] = rng.random((24, 24)) * 4
    after = moving.copy()
    after[:, :6] = 0.0  # outside the moving field of view after the warp: the fill
    d = object.__new__(report._Data)
    d.result = types.SimpleNamespace(normalization="percentile", moving=priorreg.Image(moving))
    d.fixed, d.before, d.after = moving * 2, moving, after
    mm = d.normal_maps[1]
    assert np.abs((mm(after) - mm(moving))[:, 6:]).max() < 1e-12


def test_a_rejected_linear_stage_is_one_row_that_says_so():
    """Its summary rows showed the kept start as 'rotation 0.00 deg, translation 0.00 mm' as if found."""
    why = "its optimum raised mutual information but worsened the MIND descriptor distance"
    lin = types.SimpleNamespace(kind="affine", rejected=True, notes=[why])
    assert report._linear_rows(lin) == [("linear stage (affine)", f"not kept: {why}")]


def test_a_single_slice_file_is_titled_with_its_plane_and_sides_a_png_with_nothing(tmp_path):
    import SimpleITK as sitk

    from priorreg import io as pio

    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((30, 1, 40)).astype(np.float32)),
                    str(tmp_path / "coronal.nii.gz"))  # one slice across world y
    (v,) = report._views(pio.read_image(tmp_path / "coronal.nii.gz"))
    assert v.title == "coronal; top S, left R"
    assert report._views(priorreg.Image(np.zeros((30, 40))))[0].title == ""  # no place in the world: no sides


def test_the_levels_table_gives_the_bending_weight_each_level_used(half):
    html = report.render_html(half, report.report_dict(half))
    assert "<th>bending (mm^2, as used)</th>" in html and "divided by the share of the grid sampled" in html
    for h in half.history:
        assert f"<td>{h.regulariser['bending_mm2']:.4g}</td>" in html
    # the moving image covers half the fixed anatomy: the levels sampled its field of view only, and say so
    shares = [lv["regulariser"]["sampled_share"] for lv in report.report_dict(half)["levels"]]
    assert all(0.2 < s < 0.8 for s in shares), shares


def test_the_reports_statistics_read_every_part_of_a_large_grid():
    """A flat stride through a 256^3 grid read 4 columns (x = 0, 64, 128, 192): a ramp along x showed a display
    range of (0, 192) against (1, 254); every 4th voxel along each axis gives (0, 252)."""
    x = np.broadcast_to(np.arange(256, dtype=np.float64), (256, 256, 256))
    lo, hi = report._display_range(x)
    full = np.percentile(np.arange(256), (0.5, 99.5))
    assert abs(lo - full[0]) < 4 and abs(hi - full[1]) < 4, (lo, hi, full)
    assert np.unique(report._every_nth(x)).size >= 64


def test_3d_views_pass_through_the_anatomy_the_moving_image_covers():
    """The views sat at the grid's middle: beside an 8-slice moving slab they showed no moving data, and in a
    padded grid the sagittal slice lay in the background."""
    a = np.zeros((40, 30, 50))
    a[5:16, 10:21, 5:26] = 1.0 + np.random.default_rng(0).random((11, 11, 21))  # anatomy off the middle
    assert report._anatomy_centre(a, None) == [10, 15, 15]
    fov = np.zeros(a.shape, bool)
    fov[11:13] = True  # a moving slab covers two of its slices
    assert report._anatomy_centre(a, fov)[0] in (11, 12)
    assert report._anatomy_centre(np.zeros((4, 6, 8)), None) == [2, 3, 4]  # nothing to find: the middle
    views = report._views(priorreg.Image(a), [10, 15, 15])
    assert views[0].title.startswith("axial slice k=10 of 40") and a[views[2].sl].any()


def test_checkerboard_tiles_are_square_in_mm_and_two_at_least_across_a_slab():
    """Tiles were a fixed count per axis: 16 voxels by 2 slices (24 x 6 mm) on a 19-slice 1.5 x 1.5 x 3 mm volume."""
    thin = report._even_tiles((3, 256, 256), (1.0, 1.0, 1.0))  # three slices: tiles of one, square ones in-plane
    assert thin[0, 0, 31] == thin[0, 0, 0] != thin[0, 0, 32] and thin[0, 0, 0] != thin[1, 0, 0]
    tiles = report._even_tiles((19, 128, 128), (3.0, 1.5, 1.5))
    first = lambda ax: int(np.argmax(np.diff(np.moveaxis(tiles, ax, 0)[:, 0, 0].astype(int)) != 0)) + 1  # noqa: E731
    rows, cols = first(0) * 3.0, first(2) * 1.5
    assert rows == pytest.approx(cols, abs=3.0) and 19 // first(0) >= 2, (rows, cols)
