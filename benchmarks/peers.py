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
    try:
        _niftyreg_bin("reg_f3d")
        out["niftyreg-f3d"] = (niftyreg_f3d, "ok")
        out["niftyreg-aladin-f3d"] = (niftyreg_aladin_f3d, "ok")
    except Exception as e:  # noqa: BLE001
        out["niftyreg-f3d"] = out["niftyreg-aladin-f3d"] = (None, f"niftyreg not usable: {e}")
    try:
        import picsl_greedy  # noqa: F401

        out["greedy-nmi"] = (greedy_nmi, "ok")
        out["greedy-affine-nmi"] = (greedy_affine_nmi, "ok")
    except Exception as e:  # noqa: BLE001
        out["greedy-nmi"] = out["greedy-affine-nmi"] = (None, f"picsl-greedy not importable: {e}")
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


# --------------------------------------------------------------------------- NiftyReg


def _niftyreg_bin(name):
    import niftyreg

    path = os.path.join(niftyreg.bin_path, name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(path)
    return path


NR_PEAK_MB = [0.0]  # peak RSS of the NiftyReg tools (child processes, so not in the VmHWM run.py reads), by /usr/bin/time


def _nr(tool, *args):
    import subprocess
    import tempfile

    cmd = [_niftyreg_bin(tool), *map(str, args)]
    if not os.access("/usr/bin/time", os.X_OK):
        subprocess.run(cmd, check=True, capture_output=True)
        return
    with tempfile.NamedTemporaryFile("r") as fh:
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", fh.name, *cmd], check=True, capture_output=True)
        NR_PEAK_MB[0] = max(NR_PEAK_MB[0], int(fh.read().split()[-1]) / 1024)


def _nii(path, arr, spacing):
    """NIfTI with the array axes as i, j, k and affine diag(spacing): world (RAS) mm = mm along the array axes."""
    import nibabel as nib

    aff = np.diag([*map(float, spacing), *[1.0] * (4 - len(spacing))])
    im = nib.Nifti1Image(np.asarray(arr, np.float32), aff)
    im.set_qform(aff, code=1)
    im.set_sform(aff, code=1)
    nib.save(im, path)
    return path


def _niftyreg(fixed, moving, spacing, affine, verify):
    """reg_f3d defaults (NMI 64 bins, 5-voxel grid, 3 levels), optionally initialised by reg_aladin's default
    rigid-then-affine (``-aff``: the control-point grid then holds the whole transform). Dense field by
    ``reg_transform -ref fixed -disp cpp``: world RAS mm, which on these headers are mm along the array axes."""
    import tempfile

    import nibabel as nib

    tmp = tempfile.mkdtemp(prefix="niftyreg_")
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    F, M = _nii(j("fix.nii"), fixed, spacing), _nii(j("mov.nii"), moving, spacing)
    omp = ("-omp", THREADS)
    init = ()
    if affine:
        _nr("reg_aladin", "-ref", F, "-flo", M, "-aff", j("aff.txt"), "-res", j("aff_res.nii"), *omp)
        init = ("-aff", j("aff.txt"))
    _nr("reg_f3d", "-ref", F, "-flo", M, "-cpp", j("cpp.nii"), "-res", j("res.nii"), *init, *omp)
    _nr("reg_transform", "-ref", F, "-disp", j("cpp.nii"), j("disp.nii"), *omp)
    print(f"    [niftyreg] peak RSS of the largest tool process: {NR_PEAK_MB[0]:.0f} MB", flush=True)
    disp = np.asarray(nib.load(j("disp.nii")).dataobj, np.float64)  # (n0, n1[, n2], 1, d)
    d = fixed.ndim
    field = np.stack([disp[..., k].reshape(fixed.shape) for k in range(d)])
    if verify:
        wc = []
        for k, c in enumerate(_coords(fixed.shape)):
            _nr("reg_resample", "-ref", F, "-flo", _nii(j(f"c{k}.nii"), c, spacing), "-trans", j("cpp.nii"),
                "-res", j(f"w{k}.nii"), "-inter", 1, "-pad", -1000000, *omp)
            wc.append(np.asarray(nib.load(j(f"w{k}.nii")).dataobj, np.float64).reshape(fixed.shape))
        _report("NiftyReg", np.stack(wc), field, spacing)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return field


def niftyreg_f3d(fixed, moving, spacing, verify=True):
    """NiftyReg reg_f3d with its defaults, 2 OpenMP threads."""
    return _niftyreg(fixed, moving, spacing, False, verify)


def niftyreg_aladin_f3d(fixed, moving, spacing, verify=True):
    """NiftyReg reg_aladin (its default rigid then affine) then reg_f3d initialised with the affine."""
    return _niftyreg(fixed, moving, spacing, True, verify)


# --------------------------------------------------------------------------- greedy (PICSL)

GREEDY_DEFORMABLE = "-m NMI -n 100x50x10 -s 2.0vox 0.5vox"
GREEDY_AFFINE = "-a -dof 12 -m NMI -n 100x50x10 -ia-image-centers"


def _greedy(fixed, moving, spacing, affine, verify):
    """greedy through its Python API (SimpleITK images in memory, so no file orientation is involved).
    The warp is physical LPS mm on the fixed grid = mm along the reversed array axes (origin 0, identity
    direction); ``-rc`` composes warp and affine into one field. ``-wp 0``: the warp kept at full precision
    (greedy's default quantises a SAVED warp to 0.1 voxel; an output setting, not a registration one)."""
    import io

    import picsl_greedy

    g = getattr(picsl_greedy, f"Greedy{fixed.ndim}D")()
    q = dict(out=io.StringIO(), err=io.StringIO())
    common = f"-i fix mov -threads {THREADS} -V 0"
    imgs = dict(fix=_sitk(fixed, spacing), mov=_sitk(moving, spacing))
    chain = "warp"
    if affine:
        g.execute(f"{common} {GREEDY_AFFINE} -o aff", aff=None, **imgs, **q)
        imgs, chain = {}, "warp aff"
    g.execute(f"{common} {GREEDY_DEFORMABLE} -wp 0 {'-it aff ' if affine else ''}-o warp", warp=None, **imgs, **q)
    g.execute(f"-rf fix -rc comp -r {chain}", comp=None, **q)
    import SimpleITK as sitk

    disp = sitk.GetArrayFromImage(g["comp"])  # (*shape, d), components x,y[,z] (LPS = reversed array axes)
    d = fixed.ndim
    field = np.stack([disp[..., d - 1 - k] for k in range(d)]).astype(np.float64)
    if verify:
        wc = []
        for k, c in enumerate(_coords(fixed.shape)):
            g.execute(f"-rf fix -ri LINEAR -rb -1000000 -rm c{k} w{k} -r {chain}", **{f"c{k}": _sitk(c, spacing), f"w{k}": None}, **q)
            wc.append(sitk.GetArrayFromImage(g[f"w{k}"]))
        _report("greedy", np.stack(wc).astype(np.float64), field, spacing)
    return field


def greedy_nmi(fixed, moving, spacing, verify=True):
    """greedy deformable only: ``-m NMI -n 100x50x10 -s 2.0vox 0.5vox``, 2 threads."""
    return _greedy(fixed, moving, spacing, False, verify)


def greedy_affine_nmi(fixed, moving, spacing, verify=True):
    """greedy ``-a -dof 12 -m NMI -ia-image-centers`` (affine), then the deformable stage with ``-it`` the affine;
    one composed field."""
    return _greedy(fixed, moving, spacing, True, verify)
