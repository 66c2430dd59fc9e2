import numpy as np
import pytest
import scipy.fft as sfft
import torch

import priorreg
from priorreg import jacobian, pyramid, regularizer, spatial
from priorreg.regularizer import Tikhonov


@pytest.mark.parametrize("n", [5, 8, 13, 64, 400])  # 400: longer than MATMUL_DCT_MAX, the FFT path
def test_dct_matches_scipy_and_inverts(n):
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    basis = regularizer.DCTBasis((n,), torch.float64)
    assert (basis.fwd[0] is None) == (n > regularizer.MATMUL_DCT_MAX)
    X = basis.forward(x)
    assert np.abs(X.numpy() - sfft.dct(x.numpy(), type=2, axis=1)).max() < 1e-11
    assert (basis.inverse(X) - x).abs().max() < 1e-12
    assert np.abs(regularizer.dct_axis(x, 1).numpy() - sfft.dct(x.numpy(), type=2, axis=1)).max() < 1e-11


@pytest.mark.parametrize("shape,spacing", [((9, 12), (1.0, 2.5)), ((6, 7, 5), (0.8, 1.0, 3.0))])
def test_semi_implicit_solve_residual_and_laplacian_is_gradient_of_tikhonov(shape, spacing):
    g = torch.Generator().manual_seed(0)
    d = len(shape)
    rhs = torch.randn(d, *shape, dtype=torch.float64, generator=g)
    mu = regularizer.laplacian_eigenvalues(shape, spacing, torch.float64)
    basis = regularizer.DCTBasis(shape, torch.float64)
    u, _ = basis.solve(rhs, 0.7, mu)
    assert (u + 0.7 * regularizer.neg_laplacian(u, spacing) - rhs).abs().max() < 1e-12
    # The bending spectrum mu^2 solves (I + t L L) u = rhs: the regulariser's spectrum is exact.
    reg = Tikhonov(0.3, spacing, bending=2.0)
    u, _ = basis.solve(rhs, 0.7, reg.spectrum(shape, torch.float64, None))
    assert (u + 0.7 * reg.force(u) - rhs).abs().max() < 1e-11
    # L u is the exact gradient of N * R(u): compare to central finite differences.
    v = torch.randn(d, *shape, dtype=torch.float64, generator=g)
    n = v[0].numel()
    Lv = regularizer.neg_laplacian(v, spacing)
    idx = [tuple(int(torch.randint(0, s, (1,), generator=g)) for s in (d, *shape)) for _ in range(20)]
    h = 1e-6
    for i in idx:
        e = torch.zeros_like(v)
        e[i] = h
        fd = (regularizer.tikhonov(v + e, spacing) - regularizer.tikhonov(v - e, spacing)) * n / (2 * h)
        # Quadratic energy: central differences are exact up to rounding (~1e-9 relative).
        assert abs(float(fd) - float(Lv[i])) < 1e-6 * max(1.0, abs(float(Lv[i])))


def test_tikhonov_hand_value():
    # u_0 = 2*x0 (mm) on a 3x4 grid with spacing (2, 1): D+_0 u_0 = 2*2/2 = 2 on the 2*4 pairs,
    # everything else 0, so R = 1/2 * (8 * 4) / 12 = 4/3.
    x0 = torch.arange(3, dtype=torch.float64)[:, None].expand(3, 4)
    u = torch.stack([2 * 2 * x0, torch.zeros(3, 4, dtype=torch.float64)])
    assert abs(float(regularizer.tikhonov(u, (2.0, 1.0))) - 4.0 / 3.0) < 1e-14


def test_sample_follows_array_axis_order_on_an_anisotropic_non_square_grid():
    # image value = 10*i + j; a field of (+1.5 mm, -2 mm) with spacing (0.5, 2) = (+3, -1) voxels.
    shape, spacing = (20, 13), (0.5, 2.0)
    i, j = np.meshgrid(np.arange(20), np.arange(13), indexing="ij")
    img = torch.as_tensor(10.0 * i + j)
    u = torch.zeros(2, *shape, dtype=torch.float64)
    u[0], u[1] = 1.5, -2.0
    out = spatial.sample(img, spatial.displaced_coords(u, spacing))
    inner = (slice(0, 17), slice(1, None))
    assert np.allclose(out.numpy()[inner], (10.0 * (i + 3) + (j - 1))[inner])


def test_jacobian_of_identity_and_of_a_stretch():
    u = torch.zeros(3, 6, 7, 5, dtype=torch.float64)
    assert torch.allclose(jacobian.jacobian_determinant(u, (1, 2, 3)), torch.ones(6, 7, 5, dtype=torch.float64))
    x = torch.arange(7, dtype=torch.float64)[None, :, None].expand(6, 7, 5) * 2.0  # mm along axis 1
    u[1] = 0.5 * x  # stretch by 1.5 along axis 1
    assert torch.allclose(jacobian.jacobian_determinant(u, (1, 2, 3)), torch.full((6, 7, 5), 1.5, dtype=torch.float64))


def test_upsampled_constant_field_keeps_its_physical_value():
    u = torch.full((2, 5, 6), 3.0)
    up = pyramid.upsample_field(u, (10, 12), ratio=2.0)
    assert up.shape == (2, 10, 12) and torch.allclose(up, torch.full_like(up, 3.0))


@pytest.mark.parametrize("shape", [(37, 30), (19, 22, 17), (9, 8, 5)])
@pytest.mark.parametrize("factor", [2, 4])
def test_downsample_computes_only_the_kept_voxels_of_the_blur(shape, factor):
    """The strided blur equals blurring every voxel (edges replicated) and keeping every factor-th."""
    img = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full = pyramid.gaussian_blur(img, [0.5 * factor] * len(shape))
    kept = full[tuple(slice(0, None, factor) for _ in shape)]
    out = pyramid.downsample(img, factor)
    assert out.shape == kept.shape and torch.allclose(out, kept, rtol=0, atol=1e-13)
    g = np.exp(-0.5 * (np.arange(-3, 4) / 1.0) ** 2)  # factor 2 along axis 0 only, written out in numpy
    ref = sum(w * np.take(img.numpy(), np.clip(np.arange(shape[0]) + k - 3, 0, shape[0] - 1), axis=0)
              for k, w in enumerate(g / g.sum()))
    np.testing.assert_allclose(pyramid.gaussian_blur(img, [1.0] + [0.0] * (len(shape) - 1), stride=2).numpy(),
                               ref[::2], atol=1e-13)


@pytest.mark.parametrize("shape,spacing", [((9, 12), (1.0, 2.5)), ((6, 7, 5), (0.8, 1.0, 3.0)), ((400, 3), (1.0, 1.0))])
def test_dct_basis_matches_fft_dct_and_gives_regulariser_values_by_parseval(shape, spacing, monkeypatch):
    g = torch.Generator().manual_seed(3)
    d = len(shape)
    u = torch.randn(d, *shape, dtype=torch.float64, generator=g)
    basis = regularizer.DCTBasis(shape, torch.float64)  # the 400-long axis takes the FFT path
    U = basis.forward(u)
    fft = u
    for dim in range(1, d + 1):
        fft = regularizer.dct_axis(fft, dim)
    assert (U - fft).abs().max() < 1e-10
    assert (basis.inverse(U) - u).abs().max() < 1e-12
    reg = Tikhonov(0.3, spacing, bending=2.0)
    direct, spectral = reg.values(u), reg.values_from_dct(U, basis)
    for k in ("R", "B"):
        assert abs(direct[k] - spectral[k]) < 1e-10 * abs(direct[k]), (k, direct[k], spectral[k])
    # the Parseval weights are kept per basis: another grid (the next pyramid level) gets its own
    small = tuple(n - 1 for n in shape)
    v = u[(slice(None),) + tuple(slice(0, n) for n in small)]
    direct, spectral = reg.values(v), reg.values_from_dct(regularizer.DCTBasis(small, torch.float64).forward(v),
                                                          regularizer.DCTBasis(small, torch.float64))
    for k in ("R", "B"):
        assert abs(direct[k] - spectral[k]) < 1e-10 * abs(direct[k]), (k, direct[k], spectral[k])


@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 9, 4, 3), (3, 10, 4, 3), (2, 11, 5), (3, 3, 4, 3)])
def test_jacobian_in_slabs_is_the_whole_fields(monkeypatch, shape, rows):
    """Slabs of the first axis (one voxel of halo each side) give the whole field's determinant, bit for bit,
    edges (one-sided differences) included, also where a last slab has a single row."""
    u = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sp = (1.0, 1.2, 0.9)[: shape[0]]
    whole = jacobian._determinant(u, sp)
    monkeypatch.setattr(jacobian, "SLAB_VOXELS", rows * int(np.prod(shape[2:])))  # slabs of `rows` rows
    assert torch.equal(jacobian.jacobian_determinant(u, sp), whole)


@pytest.mark.parametrize("n_points, channels", [(40_001, 1), (50_000, 3), (1000, 2)])
def test_points_split_over_threads_sample_what_one_batch_samples(n_points, channels):
    """3D sampling on a CPU splits the points into one batch item per thread (an odd count is padded):
    the same values and the same gradient with respect to the coordinates as one grid_sample call."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand((channels, 17, 19, 23), generator=g, dtype=torch.float64)
    coords = (torch.rand((3, n_points, 1, 1), generator=g, dtype=torch.float64) * 24 - 2).requires_grad_(True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        split = spatial.sample(image, coords)
        (g_split,) = torch.autograd.grad(split.square().sum(), coords)
    finally:
        torch.set_num_threads(before)
    shape = image.shape[1:]
    norm = [2.0 * coords[k] / (shape[k] - 1) - 1.0 for k in range(3)]
    grid = torch.stack(norm[::-1], dim=-1)[None]
    whole = torch.nn.functional.grid_sample(image[None], grid, padding_mode="border", align_corners=True)[0]
    (g_whole,) = torch.autograd.grad(whole.square().sum(), coords)
    assert split.shape == whole.shape == (channels, n_points, 1, 1)
    assert torch.equal(split, whole)
    torch.testing.assert_close(g_split, g_whole, rtol=1e-12, atol=1e-12)


def test_pyramid_factors_per_axis_and_the_field_carried_between_levels():
    """A thick axis is halved only once it is the finest; a field is carried between such levels unchanged."""
    import priorreg
    from priorreg.image import level_factors

    assert [level_factors((1.0, 1.0, 4.0), lv) for lv in range(4)] == [(1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 2)]
    assert level_factors((2.0, 2.0, 3.0), 2) == (4, 4, 4) and level_factors((1.0, 3.0), 2) == (4, 2)
    rng = np.random.default_rng(0)
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.random((40, 40, 10)), 2.0)
    ramp = np.zeros((3, 40, 40, 10))
    ramp[0] = np.linspace(-1.0, 1.0, 40)[:, None, None]  # linear: interpolation between levels keeps it exactly
    r = priorreg.register(f, f, spacing=(1.0, 1.0, 4.0), levels=3, max_iterations=0, linear="none",
                          initial_field=ramp, warn=False)
    assert [h.shape for h in r.history] == [(10, 10, 10), (20, 20, 10), (40, 40, 10)]
    np.testing.assert_allclose(r.field[:, :37], ramp[:, :37], atol=1e-6)  # to the last coarse voxel (index 36)


def test_warp_in_slabs_gives_the_values_of_one_piece(monkeypatch):
    """warp() computes the points a slab of the reference grid at a time (a CT-sized grid's coordinates took
    GBs at once): the same values and field of view as in one piece, on another grid, with a field."""
    from priorreg import resample as rs

    rng = np.random.default_rng(0)
    ref = priorreg.Image(np.zeros((30, 20, 16), np.float32), spacing=(1.1, 0.9, 1.3), origin=(3.0, -2.0, 5.0))
    mov = priorreg.Image(rng.random((20, 15, 10)).astype(np.float32), spacing=(2.0, 1.5, 2.2), origin=(0.0, 1.0, 2.0))
    field = rng.normal(size=(3, 30, 20, 16)) * 3
    whole, fov = rs.warp_with_fov(mov, field, reference=ref)
    monkeypatch.setattr(rs, "SLAB_VOXELS", 640)  # 2 rows a slab
    assert len(spatial.row_slabs(ref.shape, rs.SLAB_VOXELS)) == 15
    sliced, fov2 = rs.warp_with_fov(mov, field, reference=ref)
    assert np.array_equal(whole.array, sliced.array) and np.array_equal(fov, fov2) and 0 < fov.mean() < 1
    labels = mov.with_array((mov.array > 0.5).astype(np.uint8))
    assert np.array_equal(rs.warp(labels, None, reference=ref, interpolation="nearest").array,
                          rs.warp(labels, np.zeros_like(field), reference=ref, interpolation="nearest").array)


def test_solver_step_reuses_coefficients_and_first_step_reaches_its_size():
    """The solver's step (DCTs of u and F taken once, one inverse per step size) equals the plain solve of
    u - tau*F; an accepted step's coefficients serve the next; the first step size moves about step_voxels."""
    from types import SimpleNamespace

    from priorreg import solver

    g = torch.Generator().manual_seed(3)
    shape, spacing = (10, 12, 9), (1.0, 1.2, 2.0)
    reg = Tikhonov(0.5, spacing, bending=50.0)
    u, F = torch.randn(3, *shape, dtype=torch.float64, generator=g), torch.randn(3, *shape, dtype=torch.float64, generator=g)
    update = solver._Update(reg, u, spacing)
    for tau in (0.1, 3.0):
        u_new, delta, U = update(u, F, tau)
        plain, _ = update.basis.solve(u - tau * F, tau, update.spectrum)
        assert (u_new - plain).abs().max() < 1e-12 and delta == pytest.approx(solver._max_voxel_norm(plain - u, spacing))
        assert (update.basis.forward(u_new) - U).abs().max() < 1e-9
    forward = update.basis.forward
    calls = []
    update.basis.forward = lambda x: calls.append(1) or forward(x)
    F2 = torch.randn(3, *shape, dtype=torch.float64, generator=g)
    update(u_new, F2, 0.5)  # the accepted step's coefficients are reused: one forward DCT, of the new force
    assert len(calls) == 1
    opts = SimpleNamespace(step_voxels=0.5)
    fmax = solver._max_voxel_norm(F, spacing)
    tau = solver._first_tau(update, u * 0, F, fmax, opts)
    assert update(u * 0, F, tau)[1] >= 0.25 and tau > opts.step_voxels / fmax


def test_first_step_size_stops_where_the_move_stops_growing():
    """A force the regulariser smooths away (zero mean, stiff bending) has a move that saturates as tau grows:
    the search extrapolated to tau 7e20 and a move of 27 x step_voxels (amplified rounding noise, a review);
    it now ends there, as doubling did, within 2^30 of the first tau."""
    from types import SimpleNamespace

    from priorreg import solver

    g = torch.Generator().manual_seed(0)
    shape, spacing = (64, 64), (1.0, 1.0)
    F = torch.randn(2, *shape, dtype=torch.float64, generator=g)
    F -= F.mean(dim=(1, 2), keepdim=True)
    u = torch.zeros_like(F)
    update = solver._Update(Tikhonov(0.0, spacing, bending=50.0), u, spacing)
    opts = SimpleNamespace(step_voxels=0.5)
    fmax = solver._max_voxel_norm(F, spacing)
    tau = solver._first_tau(update, u, F, fmax, opts)
    assert tau <= solver.MAX_GROWTH * opts.step_voxels / fmax * (1 + 1e-12)
    assert update(u, F, tau)[1] <= opts.step_voxels
