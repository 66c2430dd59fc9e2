"""Peer adapters. Each returns a dense displacement on the fixed grid in the priorreg convention:
shape (d, *fixed.shape), mm along the ARRAY axes, pull-back (fixed voxel x samples the moving
image at x + field(x)/spacing voxels). Every tool is limited to 2 threads.

Array/ITK conventions: SimpleITK and itk.GetImageFromArray put array axis 0 on the LAST ITK
axis (x = last array axis), so ITK vector components come reversed; ANTsPy's from_numpy keeps
array axis 0 = ITK x, so its components are already in array order. All images are built with
origin 0 and identity direction, so LPS millimetres = mm along those axes.

``verify_*`` warps an image holding its own voxel coordinates with the tool's own resampler and
compares the result with the converted field (max |difference| in voxels, interior points whose
sample lies inside the image).
"""
from __future__ import annotations

import os

import numpy as np

THREADS = 2
for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_k, str(THREADS))


def available():
    """name -> (callable or None, message)."""
    out = {}
    try:
        import SimpleITK  # noqa: F401

        out["simpleitk-bspline"] = (simpleitk_bspline, "ok")
    except Exception as e:  # noqa: BLE001
        out["simpleitk-bspline"] = (None, f"SimpleITK not importable: {e}")
    try:
        import itk

        itk.ElastixRegistrationMethod  # noqa: B018
        out["elastix-bspline"] = (elastix_bspline, "ok")
        out["elastix-affine-bspline"] = (elastix_affine_bspline, "ok")
    except Exception as e:  # noqa: BLE001
        out["elastix-bspline"] = (None, f"itk-elastix not importable: {e}")
    try:
        import ants  # noqa: F401

        out["ants-syn"] = (ants_syn, "ok")
    except Exception as e:  # noqa: BLE001
        out["ants-syn"] = (None, f"antspyx not importable: {e}")
    try:
        from convexAdam.convex_adam_MIND import convex_adam_pt  # noqa: F401

        out["convexadam"] = (convexadam, "ok")
    except Exception as e:  # noqa: BLE001
        out["convexadam"] = (None, f"convexAdam not importable: {e}")
    return out


def _coords(shape):
    return np.indices(shape, dtype=np.float64)


def _interior(shape, field, spacing, margin=1.0):
    """Fixed voxels whose moving sample x + u lies inside the image (margin voxels)."""
    pos = _coords(shape) + field / np.reshape(spacing, (-1,) + (1,) * len(shape))
    ok = np.ones(shape, bool)
    for k, n in enumerate(shape):
        ok &= (pos[k] >= margin) & (pos[k] <= n - 1 - margin)
    return ok


def _report(name, warped_coords, field, spacing):
    d = field.shape[0]
    shape = field.shape[1:]
    pred = _coords(shape) + field / np.reshape(spacing, (-1,) + (1,) * d)
    ok = _interior(shape, field, spacing, 2.0)
    err = max(float(np.abs(warped_coords[k] - pred[k])[ok].max()) for k in range(d)) if ok.any() else float("nan")
    print(f"    [check] {name}: tool's resampler on a coordinate image vs converted field: max |diff| = {err:.2e} vox "
          f"({ok.mean() * 100:.0f}% of voxels inside)", flush=True)
    return err


# --------------------------------------------------------------------------- SimpleITK


def _sitk(arr, spacing):
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    im.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    return im


def simpleitk_bspline(fixed, moving, spacing, verify=True):
    """Multi-resolution B-spline, Mattes MI (50 bins), 20 % random sampling, line-search GD, mesh x1/x2/x4."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
    F, M = _sitk(fixed, spacing), _sitk(moving, spacing)
    d = fixed.ndim
    extent = [n * s for n, s in zip(fixed.shape[::-1], spacing[::-1])]
    mesh = [max(2, int(round(e / 40.0))) for e in extent]  # ~10 mm control spacing after x4
    tx = sitk.BSplineTransformInitializer(F, mesh)
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(50)
    R.SetMetricSamplingStrategy(R.RANDOM)
    R.SetMetricSamplingPercentage(0.2, seed=1)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetOptimizerAsGradientDescentLineSearch(5.0, 100, convergenceMinimumValue=1e-4, convergenceWindowSize=5)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetInitialTransformAsBSpline(tx, inPlace=True, scaleFactors=[1, 2, 4])
    R.SetShrinkFactorsPerLevel([4, 2, 1])
    R.SetSmoothingSigmasPerLevel([2, 1, 0])
    R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    out = R.Execute(F, M)
    dfilt = sitk.TransformToDisplacementFieldFilter()
    dfilt.SetReferenceImage(F)
    dfilt.SetOutputPixelType(sitk.sitkVectorFloat64)
    disp = sitk.GetArrayFromImage(dfilt.Execute(out))  # (*shape, d), components x,y[,z]
    field = np.stack([disp[..., d - 1 - k] for k in range(d)])
    if verify:
        wc = [sitk.GetArrayFromImage(sitk.Resample(_sitk(c, spacing), F, out, sitk.sitkLinear, -1e6)) for c in _coords(fixed.shape)]
        _report("SimpleITK", np.stack(wc), field, spacing)
    return field


# --------------------------------------------------------------------------- elastix


def _itk(arr, spacing):
    import itk

    im = itk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    im.SetSpacing([float(s) for s in spacing[::-1]])
    return im


def elastix_bspline(fixed, moving, spacing, verify=True, maps=("bspline",)):
    """itk-elastix default 'bspline' parameter map (or the default ``maps`` in sequence); dense field via
    transformix_deformation_field."""
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(THREADS)
    F, M = _itk(fixed, spacing), _itk(moving, spacing)
    po = itk.ParameterObject.New()
    for name in maps:
        po.AddParameterMap(po.GetDefaultParameterMap(name))
    _, res = itk.elastix_registration_method(F, M, parameter_object=po, log_to_console=False)
    dfield = itk.transformix_deformation_field(M, res)
    disp = np.asarray(itk.GetArrayFromImage(dfield), dtype=np.float64)
    d = fixed.ndim
    field = np.stack([disp[..., d - 1 - k] for k in range(d)])
    if verify:
        for i in range(res.GetNumberOfParameterMaps()):
            res.SetParameter(i, "FinalBSplineInterpolationOrder", "1")
            res.SetParameter(i, "DefaultPixelValue", "-1000000")
            res.SetParameter(i, "ResultImagePixelType", "float")
        wc = [np.asarray(itk.transformix_filter(_itk(c, spacing), res)) for c in _coords(fixed.shape)]
        _report("elastix", np.stack(wc).astype(np.float64), field, spacing)
    return field


def elastix_affine_bspline(fixed, moving, spacing, verify=True):
    """elastix's standard linear + deformable pipeline (issue 19): the default 'rigid', 'affine' and
    'bspline' parameter maps run in sequence (each starts from the previous), one composed field."""
    return elastix_bspline(fixed, moving, spacing, verify=verify, maps=("rigid", "affine", "bspline"))


# --------------------------------------------------------------------------- ANTs


def ants_syn(fixed, moving, spacing, verify=True):
    """ANTsPy SyN (affine + SyN), Mattes MI, reg_iterations=(100,70,50,20); dense field by composing the
    forward transforms into one displacement field (apply_transforms(..., compose=...))."""
    import tempfile

    import ants

    F = ants.from_numpy(np.asarray(fixed, np.float32), spacing=tuple(float(s) for s in spacing))
    M = ants.from_numpy(np.asarray(moving, np.float32), spacing=tuple(float(s) for s in spacing))
    tmp = tempfile.mkdtemp(prefix="ants_")
    r = ants.registration(F, M, type_of_transform="SyN", syn_metric="mattes", aff_metric="mattes",
                          reg_iterations=(100, 70, 50, 20), outprefix=os.path.join(tmp, "r_"))
    comp = ants.apply_transforms(F, M, transformlist=r["fwdtransforms"], compose=os.path.join(tmp, "comp_"))
    disp = ants.image_read(comp).numpy()  # (*shape, d), components along array axes (ANTs keeps axis order)
    field = np.moveaxis(np.asarray(disp, np.float64), -1, 0)
    if verify:
        wc = [ants.apply_transforms(F, ants.from_numpy(c.astype(np.float32), spacing=tuple(float(s) for s in spacing)),
                                    transformlist=r["fwdtransforms"], interpolator="linear", defaultvalue=-1e6).numpy()
              for c in _coords(fixed.shape)]
        _report("ANTs", np.stack(wc).astype(np.float64), field, spacing)
    return field


# --------------------------------------------------------------------------- ConvexAdam


def convexadam(fixed, moving, spacing, verify=True):
    """ConvexAdam (MIND-SSC), 3D only, package defaults (float32, CPU). Output: voxels along the
    array axes, pull-back; converted to mm by the spacing."""
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    if fixed.ndim != 3:
        raise NotImplementedError("ConvexAdam is 3D only")
    torch.set_num_threads(THREADS)
    f = np.asarray(fixed, np.float32)
    m = np.asarray(moving, np.float32)
    disp = convex_adam_pt(f, m, dtype=torch.float32, device=torch.device("cpu"))
    field = np.moveaxis(disp, -1, 0) * np.reshape(spacing, (3, 1, 1, 1))
    if verify:
        # ConvexAdam has no resampler of its own beyond torch grid_sample with this field; check the
        # convention with torch.grid_sample exactly as the package builds its sampling grid.
        import torch.nn.functional as Fn

        D = torch.from_numpy(np.moveaxis(disp, -1, 0)[None].astype(np.float32))
        H, W, Dd = f.shape
        grid0 = Fn.affine_grid(torch.eye(3, 4)[None], (1, 1, H, W, Dd), align_corners=True)
        scale = torch.tensor([(H - 1) / 2, (W - 1) / 2, (Dd - 1) / 2])
        grid = grid0 + (D.permute(0, 2, 3, 4, 1) / scale).flip(-1)
        wc = [Fn.grid_sample(torch.from_numpy(c.astype(np.float32))[None, None], grid, align_corners=True,
                             padding_mode="border")[0, 0].numpy() for c in _coords(f.shape)]
        _report("ConvexAdam (grid_sample as the package uses it)", np.stack(wc).astype(np.float64), field, spacing)
    return field
