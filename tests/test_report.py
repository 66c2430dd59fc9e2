"""The HTML report: one PNG per panel, the panels in order, the moving field of view."""
import base64
import types

import numpy as np
import pytest
from scipy.stats import rankdata

import priorreg
import synthetic
from priorreg import report
from priorreg.image import Image

TITLES = ["Checkerboard: fixed / moving", "Fixed-image edges over the moving image", "Difference images",
          "Deformation", "Joint intensity histograms", "Energy"]


def png_shape(b64):
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[20:24], "big"), int.from_bytes(raw[16:20], "big")  # (height, width) from IHDR


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
def test_every_panel_is_a_png_in_order(case, request):
    result = request.getfixturevalue(case)
    data = report._Data(result)
    titles = (["Linear stage: before / after"] if result.linear is not None else []) + TITLES  # (tested in test_linear_stage)
    drawn = [f for f in (panel(data) for panel in report.PANELS) if f is not None]
    assert len(drawn) == len(titles)
    for (t, caption, b64), title in zip(drawn, titles):
        h, w = png_shape(b64)
        assert t == title and caption and h > 100 and w > 100, (t, h, w)
    assert [t for t, _, _ in report.figures(result)] == titles


def test_views_are_mid_slices_with_the_pixel_aspect():
    (v,) = report._views(2, (10, 20), (1.0, 0.5))
    assert v.title == "" and v.axes == (0, 1) and v.aspect == 2.0
    views = report._views(3, (14, 18, 12), (2.0, 1.0, 1.5))
    assert [v.title for v in views] == ["slice 7 of array axis 0", "slice 9 of array axis 1", "slice 6 of array axis 2"]
    assert [v.aspect for v in views] == pytest.approx([1 / 1.5, 2 / 1.5, 2.0])
    assert np.zeros((14, 18, 12))[views[1].sl].shape == (14, 12)


def test_no_figure_left_open(half):
    plt = report._plt()
    before = len(plt.get_fignums())
    report.figures(half)
    assert len(plt.get_fignums()) == before


def test_fov_percentage_when_the_moving_image_covers_half(half):
    fov = report.field_of_view(half)
    assert fov.shape == half.fixed.shape and report.percent_outside(fov) == pytest.approx(50.0)
    html = report.render_html(half, report.report_dict(half))
    assert "<td>fixed grid outside the moving field of view</td><td>50.0%</td>" in html
    assert "50.0% of the fixed grid lies outside it" in html  # the checkerboard's caption, beside its outline


def test_fov_without_result_fov_warps_ones_through_the_field():
    # No ``fov`` attribute: an all-ones moving image warped through the field; a shift of half the
    # grid (32 mm along array axis 1) sends the right half of the fixed grid outside the moving image.
    fixed = Image(np.zeros((40, 64)), (1.0, 1.0))
    field = np.zeros((2, 40, 64))
    field[1] = 32.0
    res = types.SimpleNamespace(fixed=fixed, moving=fixed.with_array(np.ones((40, 64))), field=field)
    fov = report.field_of_view(res)
    assert fov[:, :32].all() and not fov[:, 32:].any()
    assert report.percent_outside(fov) == pytest.approx(50.0)
    assert report.percent_outside(report.field_of_view(types.SimpleNamespace(fixed=fixed))) is None


def test_full_fov_draws_no_outline(volume):
    data = report._Data(volume)
    assert report.percent_outside(data.fov) == 0.0 and data.fov_outline is None
    assert "lies outside it" not in report.panel_checkerboard(data)[1]


def test_rank_difference_is_scipy_rankdata():
    rng = np.random.default_rng(3)
    f = rng.integers(0, 5, (6, 7, 8)).astype(float)  # many ties
    m = rng.random((6, 7, 8))
    diff = report._rank_diff(f, m)

    def ranks(a):
        return ((rankdata(a.ravel(), method="average") - 1) / (a.size - 1)).reshape(a.shape)

    for v in report._views(3, f.shape, (1.0, 1.0, 1.0)):
        assert np.abs(diff(v) - np.abs(ranks(f) - ranks(m))[v.sl]).max() < 1e-12
