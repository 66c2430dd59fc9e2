"""File I/O: geometry round trips, 2D-in-3D files, colour images, errors, atomic writes, and
the ITK/ANTs convention of the displacement field file."""
import dataclasses
import os
import sys
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

import priorreg
from priorreg import io as pio
from priorreg.errors import PriorRegError


def rotation(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def smooth(shape, seed=0, amp=1.0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return amp * a / np.abs(a).max()


def blob_image(shape, seed=0):
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(x**2 for x in g))
    return (np.cos(4 * r) + 0.3 * g[0] + 0.2 * smooth(shape, seed)).astype(np.float32)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_image_round_trip_keeps_geometry(tmp_path, ext):
    img = priorreg.Image(blob_image((6, 7, 8)), (1.5, 0.7, 2.0), (10.0, -5.0, 3.0), rotation())
    path = tmp_path / f"a{ext}"
    pio.write_image(img, path)
    back = pio.read_image(path)
    assert back.shape == img.shape
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)
    # Same world position of a voxel as SimpleITK computes it.
    s = sitk.ReadImage(str(path))
    A, b = back.index_to_world()
    np.testing.assert_allclose(s.TransformIndexToPhysicalPoint((3, 2, 1)), A @ [1, 2, 3] + b, atol=1e-4)


def test_sitk_axis_order_is_numpy_order(tmp_path):
    s = sitk.Image(5, 7, 9, sitk.sitkFloat32)  # size x=5, y=7, z=9
    s.SetSpacing((1.0, 2.0, 3.0))
    path = tmp_path / "b.mha"
    sitk.WriteImage(s + 1, str(path))
    img = pio.read_image(path)
    assert img.shape == (9, 7, 5)
    assert img.spacing == (3.0, 2.0, 1.0)
    np.testing.assert_allclose(img.direction[:, 0], [0, 0, 1])  # array axis 0 is world z


@pytest.mark.parametrize("shape", [(12, 10), (6, 8, 10)])
def test_an_image_without_direction_is_where_simpleitk_puts_the_array(tmp_path, shape):
    """Third new-user pass: Image(array) had the identity in NumPy order (array axis 0 along world x), the
    mirror of SimpleITK's GetImageFromArray and of every identity-direction file: Image(file.array, spacing)
    registered to the file itself gave a 69 mm field, and written arrays opened transposed in viewers."""
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    pio.write_image(priorreg.Image(a, spacing=(2.0,) * len(shape)), tmp_path / "ours.nii.gz")
    ref = sitk.GetImageFromArray(a)
    ref.SetSpacing((2.0,) * len(shape))
    sitk.WriteImage(ref, str(tmp_path / "sitk.nii.gz"))
    ours, theirs = (sitk.ReadImage(str(tmp_path / n)) for n in ("ours.nii.gz", "sitk.nii.gz"))
    assert ours.GetDirection() == theirs.GetDirection() and ours.GetSize() == theirs.GetSize()
    read = pio.read_image(tmp_path / "sitk.nii.gz")
    np.testing.assert_array_equal(priorreg.Image(a).direction, read.direction)


def test_single_slice_3d_file_is_2d(tmp_path):
    s = sitk.GetImageFromArray(blob_image((1, 217, 181)))  # a 181x217x1 NIfTI
    s.SetSpacing((0.9, 1.1, 2.0))
    s.SetOrigin((4.0, 5.0, 6.0))
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(s, str(path))
    notes = []
    img = pio.read_image(path, "fixed", notes)
    assert img.ndim == 2 and img.shape == (217, 181)
    assert img.spacing == pytest.approx((1.1, 0.9))
    assert img.origin == pytest.approx((4.0, 5.0))
    assert notes and "2D" in notes[0]
    png = pio.read_image(pio_data("BrainT1Slice.png"))
    assert png.ndim == 2 and png.shape == (217, 181)


def test_a_single_slice_image_moved_or_resampled_is_written_with_its_own_geometry(tmp_path):
    """An Image read from a single-slice 3D file keeps the file's grid (``volume``) for writing; one given another
    spacing or origin, or subsampled, was written on the file's grid: half its size, or unmoved."""
    s = sitk.GetImageFromArray(blob_image((1, 217, 181)))  # coronal-like: the size-1 axis is the file's k
    s.SetSpacing((0.9, 1.1, 2.0))
    s.SetOrigin((4.0, 5.0, 6.0))
    sitk.WriteImage(s, str(tmp_path / "slice.nii.gz"))
    img = pio.read_image(tmp_path / "slice.nii.gz")
    cases = {"same": img, "moved": dataclasses.replace(img, origin=(7.0, -2.0)),
             "half": priorreg.Image(img.array[::2, ::2], (2.2, 1.8), img.origin, img.direction, volume=img.volume)}
    for name, im in cases.items():
        pio.write_image(im, tmp_path / f"{name}.nii.gz")
        back = sitk.ReadImage(str(tmp_path / f"{name}.nii.gz"))
        assert back.GetSize() == (im.shape[1], im.shape[0], 1), name  # still single-slice 3D
        assert back.GetSpacing() == pytest.approx((im.spacing[1], im.spacing[0], 2.0)), name
        assert back.GetOrigin() == pytest.approx((*im.origin, 6.0)), name


def pio_data(name):
    return os.path.join(os.path.dirname(priorreg.__file__), "data", "brainweb", name)


def test_rgb_png_becomes_grey_with_a_note(tmp_path):
    notes = []
    img = pio.read_image(pio_data("BrainProtonDensitySlice.png"), "moving", notes)
    assert img.ndim == 2 and np.issubdtype(img.array.dtype, np.floating)
    assert any("grey" in n for n in notes)
    rgb = sitk.ReadImage(pio_data("BrainProtonDensitySlice.png"))
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(rgb)[..., 0])  # grey stored as RGB: exactly (luma was 1e-5 off)
    # grey stored as RGB is not called colour (a new user read "is a colour (RGB) image" for this grey slice)
    assert notes == [f"moving: {pio_data('BrainProtonDensitySlice.png')} stores grey values as RGB (three equal "
                     "channels); read as grey"]
    a = sitk.GetArrayFromImage(rgb).copy()
    a[..., 0] = 255 - a[..., 0]  # a real colour image
    col = sitk.GetImageFromArray(a, isVector=True)
    sitk.WriteImage(col, str(tmp_path / "colour.png"))
    notes = []
    pio.read_image(tmp_path / "colour.png", "moving", notes)
    assert notes == [f"moving: {tmp_path / 'colour.png'} is a colour (RGB) image; converted to grey"]


def test_a_float_vector_image_is_refused_not_taken_for_colour(tmp_path):
    """A written field (3 float components per voxel) given as an image was made grey as if it were RGB and
    registered without a word; colour means integer RGB(A) components (PNG, DICOM, NIfTI RGB24)."""
    field = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(6, 7, 8, 3)).astype(np.float32), isVector=True)
    sitk.WriteImage(field, str(tmp_path / "field.nii.gz"))
    with pytest.raises(PriorRegError, match=r"has 3 components per voxel \(vector of 32-bit float; a displacement "
                                            r"field\?\); give a scalar"):
        pio.read_image(tmp_path / "field.nii.gz", "fixed")
    rgb = sitk.GetImageFromArray(np.full((6, 7, 3), 200, np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    notes = []
    assert np.allclose(pio.read_image(tmp_path / "rgb.nrrd", "fixed", notes).array, 200, atol=0.01) and notes


def test_a_grey_alpha_png_is_refused_with_what_to_do(tmp_path):
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((8, 9, 2), np.uint8), "LA").save(tmp_path / "la.png")
    with pytest.raises(PriorRegError, match=r"grey \+ alpha PNG is not supported; save it as grey or RGB"):
        pio.read_image(tmp_path / "la.png", "fixed")


def test_png_and_tiff_write(tmp_path):
    img = priorreg.Image((blob_image((20, 30)) * 50 + 100).astype(np.float32))
    pio.write_image(img, tmp_path / "a.png")
    back = pio.read_image(tmp_path / "a.png")
    assert back.array.dtype == np.uint8 and np.abs(back.array - img.array).max() <= 0.5 + 1e-6
    pio.write_image(img, tmp_path / "a.tif")
    np.testing.assert_allclose(pio.read_image(tmp_path / "a.tif").array, img.array)
    with pytest.raises(PriorRegError, match="3D image as .png"):
        pio.write_image(priorreg.Image(blob_image((5, 6, 7))), tmp_path / "b.png")


@pytest.mark.parametrize("values", [lambda b: b * 50 - 214,  # negative: was written all black
                                    lambda b: (b + 2) / 4,  # 0-1 floats: was written in two grey levels
                                    lambda b: b * 1e5 + 2e5])  # beyond 16 bits: was clipped
def test_png_refuses_data_that_rounding_to_integers_would_destroy(tmp_path, values):
    img = priorreg.Image(values(blob_image((20, 30))).astype(np.float32))
    with pytest.raises(PriorRegError, match=r"PNG holds integers 0-65535 and this image's values run from"):
        pio.write_image(img, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
    pio.write_image(priorreg.Image(np.rint(blob_image((20, 30)) * 2 + 3)), tmp_path / "few.png")  # integers: kept as they are


def _write_series(d, vol, uid: str, prefix: str = "slice", description: str = "", tilt_deg: float = 0.0,
                  modality: str = "MR") -> None:
    for k in range(vol.shape[0]):
        s = sitk.GetImageFromArray(vol[k : k + 1])
        s.SetSpacing((0.8, 0.8, 2.5))
        y = 2.5 * k * np.tan(np.radians(tilt_deg))  # a tilted gantry shifts each slice along y
        s.SetOrigin((0.0, y, 2.5 * k))
        s.SetMetaData("0020|0032", f"0\\{y}\\{2.5 * k}")  # image position (patient)
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")  # orientation
        s.SetMetaData("0020|000e", uid)  # series instance UID
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0008|0060", modality)
        s.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1.41")  # study instance UID
        if description:
            s.SetMetaData("0008|103e", description)
            s.SetMetaData("0020|0011", uid[-1])  # series number
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(d / f"{prefix}{k:03d}.dcm"))
        w.Execute(s)


def test_the_modality_a_file_states_is_read_from_dicom_and_from_a_json_sidecar(tmp_path):
    """DICOM's Modality (0008|0060), or the "Modality" dcm2niix writes beside a NIfTI file, chooses the
    functional preset for PET and SPECT (checks.preset_for); a file that does not say gives None."""
    vol = (blob_image((4, 16, 12)) * 500 + 1000).astype(np.int16)
    (tmp_path / "pet").mkdir()
    _write_series(tmp_path / "pet", vol, "1.2.826.0.1.3680043.2.1125.1.44", modality="PT")
    assert pio.read_image(tmp_path / "pet").modality == "PT"
    assert pio.read_image(tmp_path / "pet" / "slice000.dcm").modality == "PT"
    nii = tmp_path / "spect.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol.astype(np.float32)), str(nii))
    assert pio.read_image(nii).modality is None
    (tmp_path / "spect.json").write_text('{"Modality": "nm", "Manufacturer": "X"}', encoding="utf-8")
    assert pio.read_image(nii).modality == "NM"
    (tmp_path / "spect.json").write_text("[not an object", encoding="utf-8")  # an unreadable sidecar says nothing
    assert pio.read_image(nii).modality is None


def test_dicom_series_directory(tmp_path):
    vol = (blob_image((5, 16, 12)) * 500 + 1000).astype(np.int16)
    d = tmp_path / "dicom"
    d.mkdir()
    _write_series(d, vol, "1.2.826.0.1.3680043.2.1125.1.42")
    img = pio.read_image(d)
    assert img.shape == vol.shape
    np.testing.assert_array_equal(img.array, vol)
    assert img.spacing[0] == pytest.approx(2.5)
    assert img.spacing[1:] == pytest.approx((0.8, 0.8))
    # A second, shorter series: the longer one is read, and the note names it.
    _write_series(d, vol[:3], "1.2.826.0.1.3680043.2.1125.1.43", "other", description="T1 pre")
    notes = []
    assert pio.read_image(d, "fixed", notes).shape == vol.shape
    assert notes == [f"fixed: {d} holds 2 DICOM series; using the longest, UID 1.2.826.0.1.3680043.2.1125.1.42 (5 files); "
                     'not used: "T1 pre" series 3 (UID 1.2.826.0.1.3680043.2.1125.1.43), 3 files']
    # Two series of one length: one was picked at random.
    _write_series(d, vol[:5], "1.2.826.0.1.3680043.2.1125.1.43", "other")
    with pytest.raises(PriorRegError, match=r"holds 2 DICOM series of 5 files each \(UID .*42; UID .*43\); give a folder with the one"):
        pio.read_image(d)
    for f in d.glob("other*"):
        f.unlink()
    notes = []  # one file of the series: read as one slice, and said so
    assert pio.read_image(d / "slice001.dcm", "fixed", notes).shape == (16, 12)
    assert notes[0] == (f"fixed: {d / 'slice001.dcm'} is one file of a DICOM series of 5 files in its folder; it is read "
                        "as one slice (give the folder to read the series as a volume)")
    from priorreg import workflow  # ... and against a volume the refusal says so too (it said only "2D vs 3D")

    with pytest.raises(PriorRegError, match=r"slice001.dcm is one slice: give the DICOM series' folder to read the volume"):
        workflow.check_pair(pio.read_image(d), pio.read_image(d / "slice001.dcm"), d, d / "slice001.dcm")
    # A missing slice: ITK spread the other four over one mean spacing (3.1 mm), every slice misplaced.
    (d / "slice002.dcm").unlink()
    with pytest.raises(PriorRegError, match=r"missing or unevenly spaced slices \(gaps from 2.5 to 5 mm\)"):
        pio.read_image(d)
    # A tilted gantry: ITK stacked the slices straight along their normal, the last one 2.7 mm off, silently.
    t = tmp_path / "tilt"
    t.mkdir()
    _write_series(t, vol, "1.2.826.0.1.3680043.2.1125.1.44", tilt_deg=15.0)
    with pytest.raises(PriorRegError, match=r"shift within their planes .*\(2.68 mm over the series, a 15.0 degree tilt"):
        pio.read_image(t)
    with pytest.raises(PriorRegError, match=r"tmp_path_outer is a directory without a DICOM series \(give an image file or "
                                            r"a DICOM series folder; below it, pat/study/t1 holds a DICOM series\)"):
        (tmp_path / "tmp_path_outer" / "pat" / "study" / "t1").mkdir(parents=True)  # patient/study/series below
        _write_series(tmp_path / "tmp_path_outer" / "pat" / "study" / "t1", vol, "1.2.826.0.1.3680043.2.1125.1.46")
        pio.read_image(tmp_path / "tmp_path_outer")


def test_read_errors(tmp_path):
    with pytest.raises(PriorRegError, match="no such file"):
        pio.read_image(tmp_path / "missing.nii.gz", "fixed")
    (tmp_path / "a.xyz").write_text("hello")
    with pytest.raises(PriorRegError, match="unsupported file format '.xyz'"):
        pio.read_image(tmp_path / "a.xyz", "fixed")
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(PriorRegError, match="cannot read"):
        pio.read_image(tmp_path / "bad.nii.gz", "fixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorRegError, match="without a DICOM series"):
        pio.read_image(tmp_path / "empty", "fixed")
    with pytest.raises(PriorRegError, match="not a displacement field"):
        pio.write_image(priorreg.Image(blob_image((6, 7, 8))), tmp_path / "s.nii.gz")
        pio.read_field(tmp_path / "s.nii.gz")
    # volumes stacked along a 4th axis (no vector intent, as nibabel writes one): said "need 4 vector components, got 1"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((10, 9, 8), np.float32))] * 3), str(tmp_path / "v.nii.gz"))
    with pytest.raises(PriorRegError, match="is a 4D image of 3 scalar volumes, not a displacement field"):
        pio.read_field(tmp_path / "v.nii.gz")
    with pytest.raises(PriorRegError, match="unsupported output format"):
        pio.write_image(priorreg.Image(blob_image((6, 7))), tmp_path / "x.jpg")
    for ext in (".png", ".tif"):  # ITK's TIFF writer dropped a 3D image's origin and slice spacing
        with pytest.raises(PriorRegError, match=f"cannot write a 3D image as {ext}; use .nii.gz"):
            pio.write_image(priorreg.Image(blob_image((6, 7, 8))), tmp_path / f"x{ext}")
    os.mkfifo(tmp_path / "pipe.nii.gz")  # was read forever
    with pytest.raises(PriorRegError, match="pipe.nii.gz is not a regular file"):
        pio.read_image(tmp_path / "pipe.nii.gz", "fixed")


def _write_nifti2(path, arr: np.ndarray) -> None:
    """A 2D float32 NIfTI-2 file (540-byte header, as nibabel.Nifti2Image writes), identity sform."""
    import struct

    srow = (1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0)
    head = struct.pack("<i8shh8q3d8dq6dqq80s24sii6d12diii16sc15s", 540, b"n+2\0\r\n\x1a\n", 16, 32,
                       2, arr.shape[1], arr.shape[0], 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 544,
                       1, 0, 0, 0, 0, 0, 0, 0, b"", b"", 0, 1, 0, 0, 0, 0, 0, 0, *srow, 0, 2, 0, b"", b"\0", b"")
    assert len(head) == 540
    path.write_bytes(head + b"\0" * 4 + np.ascontiguousarray(arr, "<f4").tobytes())


def test_itks_refusals_say_why_and_other_names_are_read(tmp_path):
    """ITK's reason spans lines (a matrix): only its last line, "(-0 -0)", was kept. A NIfTI-2 file, a
    .hdr/.img pair and an upper-case extension ("SCAN.MHA", which ITK did not read) each get their line."""
    from priorreg.errors import itk_reason

    e = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: /x/itkImageBase.hxx:145:\nITK ERROR: "
                     "Image(0x55db358c16b0): Bad direction, determinant is 0. Refusing to change direction from 1 0\n0 1\n"
                     " to -1 -0\n-0 -0\n")
    assert itk_reason(e) == "Bad direction, determinant is 0. Refusing to change direction from 1 0 0 1 to -1 -0 -0 -0"
    assert itk_reason(RuntimeError("one line")) == "one line" and itk_reason(RuntimeError("")) == "unknown error"
    windows = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: D:\\a\\itkImageBase.hxx:145:\nITK ERROR: "
                           "Image(00000199AF126C20): Bad direction, determinant is 0.\n-0 -0\n")
    assert itk_reason(windows) == "Bad direction, determinant is 0. -0 -0"
    img = sitk.GetImageFromArray(blob_image((6, 7)).astype(np.float32))
    _write_nifti2(tmp_path / "two.nii", sitk.GetArrayFromImage(img))
    with pytest.raises(PriorRegError, match=r"two.nii as an image \(a NIfTI-2 file, which ITK does not read; save it as NIfTI-1"):
        pio.read_image(tmp_path / "two.nii", "moving")
    for ext in (".hdr", ".img"):
        (tmp_path / f"pair{ext}").write_bytes(b"\0" * 348)
        with pytest.raises(PriorRegError, match=r"half of an Analyze/NIfTI .hdr/.img pair, .* convert the pair to .nii.gz"):
            pio.read_image(tmp_path / f"pair{ext}", "moving")
    sitk.WriteImage(img, str(tmp_path / "scan.mha"))
    (tmp_path / "scan.mha").rename(tmp_path / "SCAN.MHA")
    np.testing.assert_array_equal(pio.read_image(tmp_path / "SCAN.MHA").array, sitk.GetArrayFromImage(img))
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    (tmp_path / "x.nii.gz").rename(tmp_path / "X.NII.GZ")
    np.testing.assert_array_equal(pio.read_image(tmp_path / "X.NII.GZ").array, sitk.GetArrayFromImage(img))
    (tmp_path / "X.NII.GZ").rename(tmp_path / "x.nii.GZ")  # niftilib refused it in seven lines of its own
    with pytest.raises(PriorRegError, match=r"NIfTI takes its extension in one case \(.nii.gz or .NII.GZ\), not .nii.GZ"):
        pio.read_image(tmp_path / "x.nii.GZ")
    stack = sitk.GetImageFromArray(blob_image((5, 8, 9)).astype(np.float32))
    sitk.WriteImage(stack, str(tmp_path / "stack.tif"))  # read as 3D without a word on its made-up slice spacing
    notes = []
    assert pio.read_image(tmp_path / "stack.tif", "moving", notes).shape == (5, 8, 9)
    assert notes == [f"moving: {tmp_path / 'stack.tif'} is a TIFF stack of 5 pages; TIFF stores no slice spacing or position, "
                     "so 1 mm between slices at the origin is assumed (give NIfTI, NRRD or DICOM for the real geometry)"]


def test_colour_labels_and_an_oblique_dicom_slice_are_refused_with_the_way_out(tmp_path):
    """A palette PNG of labels warped with nearest neighbour came out as its colours' grey values (0, 14.6,
    38.3, 75.1 for labels 0, 1, 2, 7); one file of an oblique DICOM series was advised to be resampled."""
    from PIL import Image as PILImage

    lab = np.zeros((20, 24), np.uint8)
    lab[4:16, 5:20], lab[8:12, 8:12] = 1, 7
    p = PILImage.fromarray(lab, "P")
    p.putpalette([0, 0, 0, 128, 0, 0] + [0] * 15 + [0, 0, 128] + [0] * 744)
    p.save(tmp_path / "labels.png")
    assert pio.read_image(tmp_path / "labels.png").shape == lab.shape  # an image to register: grey, with a note
    with pytest.raises(PriorRegError, match=r"labels.png is a colour \(RGB or palette\) image, and converted to grey its labels"):
        pio.read_image(tmp_path / "labels.png", "moving", labels=True)
    d = tmp_path / "oblique"
    d.mkdir()
    c, s_ = np.cos(np.radians(20)), np.sin(np.radians(20))
    for k in range(3):
        sl = sitk.GetImageFromArray((blob_image((1, 16, 12)) * 500).astype(np.int16))
        sl.SetMetaData("0020|0037", f"1\\0\\0\\0\\{c}\\{s_}")  # rows along x, columns tilted 20 degrees
        sl.SetMetaData("0020|0032", f"0\\{-s_ * 2.5 * k}\\{c * 2.5 * k}")
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.45")
        sl.SetMetaData("0020|0013", str(k + 1))
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(d / f"s{k}.dcm"))
        w.Execute(sl)
    with pytest.raises(PriorRegError, match=r"s1.dcm is one file of a DICOM series of 3 files in its folder, and one oblique "
                                            r"slice by itself is not supported; give the folder"):
        pio.read_image(d / "s1.dcm", "moving")


@pytest.mark.parametrize("compress", [True, False])
def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch, compress):
    img = priorreg.Image(blob_image((8, 9)))
    target = tmp_path / "out.nii.gz"
    pio.write_image(img, target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(PriorRegError, match="cannot write"):
        pio.write_image(priorreg.Image(blob_image((8, 9)) + 1), target, compress=compress)
    assert target.read_bytes() == before  # old file intact
    assert sorted(os.listdir(tmp_path)) == ["out.nii.gz"]  # no temporary left behind


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("compress", [True, False])
def test_a_short_nifti_write_is_an_error_not_a_cut_file(tmp_path, monkeypatch, ext, compress):
    """ITK's NIfTI writer says a short write (a full disk) on stderr only and returns: a new user's apply
    reported 'wrote' over a cut file. Here ITK writes the file and it is cut short afterwards."""
    real = sitk.WriteImage

    def short(img, path, *a):
        real(img, path, *a)
        with open(path, "r+b") as f:
            f.truncate(400)

    monkeypatch.setattr(sitk, "WriteImage", short)
    with pytest.raises(PriorRegError, match=r"cannot write .*out.* shorter than the image .*disk full"):
        pio.write_image(priorreg.Image(blob_image((20, 30))), tmp_path / f"out{ext}", compress=compress)
    assert os.listdir(tmp_path) == []  # neither the cut file nor a temporary


def test_a_file_size_limit_is_priorreg_s_line_alone(tmp_path):
    """A write cut short (here by a file size limit; a full disk alike) printed ITK's NIfTI library's own
    "** ERROR: NWAD: wrote only ... bytes" above priorreg's line, which says the same."""
    resource = pytest.importorskip("resource")  # POSIX
    code = ("import sys, numpy as np, priorreg, priorreg.io as pio\n"
            "try:\n    pio.write_image(priorreg.Image(np.random.default_rng(0).random((60, 60, 60))), sys.argv[1])\n"
            "except priorreg.PriorRegError as e:\n    print(e, file=sys.stderr)\n")
    for name in ("out.nii.gz", "out.nii"):
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)))
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"output: cannot write {tmp_path / name} ("), p.stderr
    assert os.listdir(tmp_path) == []


def test_what_itk_says_on_stderr_is_passed_on_less_its_errors_where_the_write_failed(capfd):
    with pio._itk_error_lines_dropped():
        os.write(2, b"** ERROR: said while writing\nanother library's line\n")
    assert capfd.readouterr().err == "** ERROR: said while writing\nanother library's line\n"
    with pytest.raises(OSError), pio._itk_error_lines_dropped():
        os.write(2, b"** ERROR: NWAD: wrote only 1 of 2 bytes\nanother library's line\n")
        raise OSError("short")
    assert capfd.readouterr().err == "another library's line\n"


def test_uncompressed_nii_gz_is_a_gzip_file_that_readers_read(tmp_path):
    import gzip
    import importlib.util

    img = priorreg.Image(np.zeros((20, 30, 40), np.float32), (1.5, 0.7, 2.0), (10.0, -5.0, 3.0), rotation())
    img = img.with_array(np.pad(blob_image((10, 30, 40)), ((5, 5), (0, 0), (0, 0))))  # zeros compress
    pio.write_image(img, tmp_path / "packed.nii.gz")
    pio.write_image(img, tmp_path / "stored.nii.gz", compress=False)
    packed, stored = (tmp_path / "packed.nii.gz").read_bytes(), (tmp_path / "stored.nii.gz").read_bytes()
    assert stored[:2] == packed[:2] == b"\x1f\x8b"  # both gzip streams
    assert len(stored) > img.array.nbytes > len(packed)  # the voxels as they are, not compressed
    assert gzip.decompress(stored) == gzip.decompress(packed)  # the same NIfTI file inside
    for path in (tmp_path / "stored.nii.gz", tmp_path / "packed.nii.gz"):
        np.testing.assert_array_equal(pio.read_image(path).array, img.array)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), img.array)
        if importlib.util.find_spec("nibabel"):  # not a dependency; where it is installed it reads both too
            import nibabel

            np.testing.assert_array_equal(np.asarray(nibabel.load(path).dataobj).transpose(2, 1, 0), img.array)
    assert sorted(os.listdir(tmp_path)) == ["packed.nii.gz", "stored.nii.gz"]  # no temporary left behind


def test_field_file_round_trip(tmp_path):
    grid = priorreg.Image(np.zeros((6, 7, 8), np.float32), (1.5, 0.7, 2.0), (1.0, 2.0, 3.0), rotation(1))
    field = np.stack([smooth(grid.shape, k, 2.0) for k in range(3)])
    world = np.einsum("ij,j...->...i", grid.direction, field)
    pio.write_field(world, grid, tmp_path / "f.nii.gz")
    s = sitk.ReadImage(str(tmp_path / "f.nii.gz"))
    assert s.GetPixelID() == sitk.sitkVectorFloat32 and s.GetNumberOfComponentsPerPixel() == 3  # as ITK/ANTs write
    np.testing.assert_allclose(sitk.GetArrayFromImage(s), world, rtol=1e-6, atol=1e-6)
    back, g, through = pio.read_field(tmp_path / "f.nii.gz")
    np.testing.assert_allclose(back, field, atol=1e-5)  # NIfTI stores the direction in float32
    assert g.same_grid(grid) and through == 0.0
    world[2, 3, 4, 1] = np.nan
    for ext in ("mha", "nii.gz"):  # ITK's NIfTI reader reads a NaN as 0: the file's data block is checked
        pio.write_field(world, grid, tmp_path / f"nan.{ext}")
        with pytest.raises(PriorRegError, match="contains NaN/Inf displacements"):
            pio.read_field(tmp_path / f"nan.{ext}")


def _case_3d():
    """Fixed grid: anisotropic, rotated; moving: another grid (shifted, other spacing and direction)."""
    fixed = priorreg.Image(np.zeros((14, 18, 16), np.float32), (2.0, 1.0, 1.5), (-3.0, 4.0, 1.0), rotation(2))
    A_f, b_f = fixed.index_to_world()
    center = A_f @ ((np.asarray(fixed.shape) - 1) / 2) + b_f
    shape_m, sp_m, D_m = (30, 32, 28), (1.3, 1.1, 1.2), rotation(3)
    origin_m = center - D_m @ (np.asarray(sp_m) * (np.asarray(shape_m) - 1) / 2)  # same centre, other grid
    moving = priorreg.Image(blob_image(shape_m), sp_m, origin_m, D_m)
    field = np.stack([smooth(fixed.shape, 10 + k, 1.5) for k in range(3)])
    return fixed, moving, field


def _interior(shape, border=3):
    return tuple(slice(border, n - border) for n in shape)


def _valid(fixed, moving, field, margin=2.0):
    """Fixed voxels whose sample point lies well inside the moving image (away from its border)."""
    A_f, b_f = fixed.index_to_world()
    A_m, b_m = moving.index_to_world()
    idx = np.indices(fixed.shape).reshape(3, -1).astype(float)
    world = A_f @ idx + b_f[:, None] + fixed.direction @ field.reshape(3, -1)
    mi = np.linalg.solve(A_m, world - b_m[:, None])
    ok = np.all((mi >= margin) & (mi <= np.asarray(moving.shape)[:, None] - 1 - margin), axis=0)
    return ok.reshape(fixed.shape)


def test_sitk_displacement_field_transform_reproduces_warp(tmp_path):
    fixed, moving, field = _case_3d()
    warped = priorreg.warp(moving, field, reference=fixed)
    pio.write_field(np.einsum("ij,j...->...i", fixed.direction, field), fixed, tmp_path / "field.nii.gz")
    pio.write_image(moving, tmp_path / "moving.nii.gz")
    pio.write_image(fixed, tmp_path / "fixed.nii.gz")

    disp = sitk.ReadImage(str(tmp_path / "field.nii.gz"), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(disp)
    ref = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"))
    out = sitk.Resample(sitk.ReadImage(str(tmp_path / "moving.nii.gz")), ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    got = sitk.GetArrayFromImage(out)
    ok = _valid(fixed, moving, field)
    assert ok.mean() > 0.3
    np.testing.assert_allclose(got[ok], warped.array[ok], atol=1e-4)


def test_ants_apply_transforms_reproduces_warp(tmp_path):
    ants = pytest.importorskip("ants")
    fixed, moving, field = _case_3d()
    warped = priorreg.warp(moving, field, reference=fixed)
    pio.write_field(np.einsum("ij,j...->...i", fixed.direction, field), fixed, tmp_path / "field.nii.gz")
    pio.write_image(moving, tmp_path / "moving.nii.gz")
    pio.write_image(fixed, tmp_path / "fixed.nii.gz")
    out = ants.apply_transforms(
        fixed=ants.image_read(str(tmp_path / "fixed.nii.gz")),
        moving=ants.image_read(str(tmp_path / "moving.nii.gz")),
        transformlist=[str(tmp_path / "field.nii.gz")],
        interpolator="linear",
    )
    out.to_file(str(tmp_path / "ants.nii.gz"))
    got = pio.read_image(tmp_path / "ants.nii.gz").array
    ok = _valid(fixed, moving, field)
    assert ok.mean() > 0.3
    np.testing.assert_allclose(got[ok], warped.array[ok], atol=1e-3)


# --------------------------------------------------------------------------- NIfTI as stored


def _nifti_with(tmp_path, name, values, shape=(6, 7, 8)):
    """A float32 NIfTI holding ``values`` (an array of ``shape``), written by SimpleITK."""
    path = tmp_path / name
    arr = np.asarray(values, np.float32).reshape(shape)
    s = sitk.GetImageFromArray(arr)
    s.SetSpacing((0.9, 1.1, 2.0))
    sitk.WriteImage(s, str(path), name.endswith(".gz"))
    return path


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_nan_and_inf_are_refused(tmp_path, ext):
    # ITK's NIfTI reader turns NaN/Inf into 0: a half-NaN image would register, an all-NaN one
    # would be called constant. read_image checks the data block as stored.
    a = blob_image((6, 7, 8))
    half = a.copy()
    half[:3] = np.nan
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(_nifti_with(tmp_path, "h" + ext, half))))
    assert np.all(itk[:3] == 0)  # what ITK alone makes of it
    with pytest.raises(PriorRegError, match=r"^moving: .* contains 168 NaN voxel\(s\) \(168 NaN of 336 voxels\)") as e:
        pio.read_image(tmp_path / ("h" + ext), "moving")
    assert "\n" not in str(e.value)
    with pytest.raises(PriorRegError, match=r"contains 336 NaN voxel\(s\) \(every voxel is NaN/Inf\)"):
        pio.read_image(_nifti_with(tmp_path, "all" + ext, np.full(a.shape, np.nan)), "fixed")
    inf = a.copy()
    inf[1, 2, 3] = np.inf
    inf[2, 2, 2] = np.nan
    with pytest.raises(PriorRegError, match=r"1 NaN and 1 Inf voxel\(s\)"):
        pio.read_image(_nifti_with(tmp_path, "inf" + ext, inf), "fixed")
    # Asked for, the values come back as stored (not ITK's zeros), at the right voxels.
    back = pio.read_image(tmp_path / ("inf" + ext), allow_nonfinite=True)
    assert np.isposinf(back.array[1, 2, 3]) and np.isnan(back.array[2, 2, 2])
    ok = np.isfinite(inf)
    np.testing.assert_array_equal(back.array[ok], a[ok])
    assert np.count_nonzero(~np.isfinite(back.array)) == 2
    # Finite NIfTI files, and NaN in other formats, are read as before / refused alike.
    np.testing.assert_array_equal(pio.read_image(_nifti_with(tmp_path, "ok" + ext, a)).array, a)
    pio.write_image(priorreg.Image(half), tmp_path / "h.mha")
    with pytest.raises(PriorRegError, match="168 NaN"):
        pio.read_image(tmp_path / "h.mha", "moving")


def test_nifti_nan_with_scaling_and_big_endian(tmp_path):
    """The data-block check follows the header: byte order, vox_offset, and scl_slope/scl_inter."""
    import struct

    a = blob_image((4, 5, 6))
    a[0, 0, 0] = np.nan
    hdr = bytearray(348)
    struct.pack_into(">i", hdr, 0, 348)
    struct.pack_into(">8h", hdr, 40, 3, 6, 5, 4, 1, 1, 1, 1)
    struct.pack_into(">hh", hdr, 70, 16, 32)  # float32
    struct.pack_into(">8f", hdr, 76, 1, 1, 1, 1, 0, 0, 0, 0)
    struct.pack_into(">fff", hdr, 108, 352.0, 2.0, 1.0)  # vox_offset, scl_slope, scl_inter
    struct.pack_into(">h", hdr, 254, 1)  # sform_code (with an identity sform below)
    struct.pack_into(">4f", hdr, 280, 1, 0, 0, 0)
    struct.pack_into(">4f", hdr, 296, 0, 1, 0, 0)
    struct.pack_into(">4f", hdr, 312, 0, 0, 1, 0)
    hdr[344:348] = b"n+1\0"
    path = tmp_path / "be.nii"
    path.write_bytes(bytes(hdr) + b"\0\0\0\0" + a.astype(">f4").tobytes())
    with pytest.raises(PriorRegError, match="1 NaN voxel"):
        pio.read_image(path)
    back = pio.read_image(path, allow_nonfinite=True)
    assert np.isnan(back.array[0, 0, 0])
    np.testing.assert_allclose(back.array.ravel()[1:], 2.0 * a.ravel()[1:] + 1.0, rtol=1e-6)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_nifti_is_a_read_error(tmp_path, ext):
    # ITK zero-fills the missing part of a cut file; it must be refused in one line.
    path = _nifti_with(tmp_path, "a" + ext, blob_image((20, 30, 40)), (20, 30, 40))
    data = path.read_bytes()
    for cut in (0.6, 0.99):
        bad = tmp_path / f"cut{cut}{ext}"
        bad.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(PriorRegError, match=r"^moving: cannot read .*: the file is damaged or truncated") as e:
            pio.read_image(bad, "moving")
        assert "\n" not in str(e.value)
    # Just the header (and a cut header) too.
    (tmp_path / f"h{ext}").write_bytes(data[: 200 if ext == ".nii" else 60])
    with pytest.raises(PriorRegError, match="cannot read"):
        pio.read_image(tmp_path / f"h{ext}", "moving")
    if ext == ".nii.gz":  # a corrupt byte inside the compressed stream (CRC or inflate error)
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        (tmp_path / "flip.nii.gz").write_bytes(bytes(flipped))
        with pytest.raises(PriorRegError, match="cannot read"):
            pio.read_image(tmp_path / "flip.nii.gz", "moving")


# --------------------------------------------------------------------------- file modes


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_outputs_get_the_umask_mode(tmp_path, umask022):
    """Atomic writes go through mkstemp (0600); what is renamed into place gets 0666 & ~umask."""
    import stat

    img = priorreg.Image(blob_image((6, 7, 8)))
    pio.write_image(img, tmp_path / "a.nii.gz")
    pio.write_field(np.zeros((6, 7, 8, 3)), img, tmp_path / "f.nii.gz")
    pio.write_bytes(tmp_path / "r.json", b"{}\n")
    for n in ("a.nii.gz", "f.nii.gz", "r.json"):
        assert stat.S_IMODE(os.stat(tmp_path / n).st_mode) == 0o644, n
    assert pio.default_mode() == 0o644 and pio.default_mode(directory=True) == 0o755
    os.umask(0o077)
    pio.write_image(img, tmp_path / "b.nii.gz")
    assert stat.S_IMODE(os.stat(tmp_path / "b.nii.gz").st_mode) == 0o600
    prior = priorreg.fit_prior([blob_image((16, 16))], [blob_image((16, 16), 1)], bins=16, levels=1)
    os.umask(0o022)
    prior.save(tmp_path / "p.npz")  # a prior on a shared file system is read by other users' workers
    assert stat.S_IMODE(os.stat(tmp_path / "p.npz").st_mode) == 0o644
    os.umask(0o077)
    # Replacing a file keeps that file's mode, as an ordinary write would.
    os.chmod(tmp_path / "a.nii.gz", 0o640)
    pio.write_image(img, tmp_path / "a.nii.gz")
    assert stat.S_IMODE(os.stat(tmp_path / "a.nii.gz").st_mode) == 0o640


def test_metaimage_with_a_missing_or_short_data_file_is_one_clear_error(tmp_path, capfd):
    """MetaIO printed its own lines, and ITK's reason was "No such file or directory" for a short .raw."""
    img = sitk.GetImageFromArray(blob_image((6, 7, 8)).astype(np.float32))
    sitk.WriteImage(img, str(tmp_path / "a.mhd"))  # a.mhd + a.raw
    sitk.WriteImage(img, str(tmp_path / "b.mha"))
    assert pio.read_image(tmp_path / "a.mhd").shape == (6, 7, 8) and pio.read_image(tmp_path / "b.mha").shape == (6, 7, 8)
    raw = (tmp_path / "a.raw").read_bytes()
    (tmp_path / "a.raw").write_bytes(raw[:1000])
    with pytest.raises(PriorRegError, match=r"damaged or truncated \(its data holds 1000 of the 1344 bytes"):
        pio.read_image(tmp_path / "a.mhd")
    (tmp_path / "a.raw").unlink()
    with pytest.raises(PriorRegError, match=r"its data file .*a.raw does not exist"):
        pio.read_image(tmp_path / "a.mhd")
    mha = (tmp_path / "b.mha").read_bytes()
    (tmp_path / "b.mha").write_bytes(mha[:-10])
    with pytest.raises(PriorRegError, match=r"damaged or truncated \(its data holds 1334 of the 1344 bytes"):
        pio.read_image(tmp_path / "b.mha")
    assert "MetaImage" not in capfd.readouterr().err
    text = "ObjectType = Image\nNDims = 2\nDimSize = 3 2\nElementType = MET_FLOAT\nBinaryData = False\n"
    (tmp_path / "t.mha").write_text(text + "ElementDataFile = LOCAL\n1 2 3\n4 5 6\n")  # text data: 12 bytes for 24
    np.testing.assert_array_equal(pio.read_image(tmp_path / "t.mha").array, [[1, 2, 3], [4, 5, 6]])


def test_a_rounded_direction_is_read_as_itk_takes_it_and_a_sheared_fixed_image_is_refused_first(tmp_path, capsys):
    """An .mha header's rounded matrix ("0.87 0.5": columns 1.0034 long) was refused by Image(); its
    unit axes and spacing now give ITK's world steps. A sheared fixed image was refused only when writing
    warped.nii.gz, after the whole registration."""
    from priorreg import cli

    img = sitk.GetImageFromArray(blob_image((6, 7, 8)).astype(np.float32))
    img.SetSpacing((1.5, 2.0, 3.0))
    img.SetDirection((0.87, -0.5, 0, 0.5, 0.87, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "r.mha"))
    im = pio.read_image(tmp_path / "r.mha")
    itk_steps = np.asarray(img.GetDirection()).reshape(3, 3)[:, ::-1] @ np.diag(np.asarray(img.GetSpacing())[::-1])
    np.testing.assert_allclose(im.index_to_world()[0], itk_steps, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(im.direction, axis=0), 1.0)
    pio.write_image(im, tmp_path / "r.nii.gz")
    assert pio.read_image(tmp_path / "r.nii.gz").same_grid(im)
    img.SetDirection((1, 0.6, 0, 0, 0.8, 0, 0, 0, 1))  # unit axes, not perpendicular
    sitk.WriteImage(img, str(tmp_path / "s.mha"))
    rc = cli.main(["register", str(tmp_path / "s.mha"), str(tmp_path / "r.mha"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "has axes that are not perpendicular" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_nifti_whose_sform_disagrees_with_the_qform_itk_reads_is_noted(tmp_path):
    """ITK reads the qform unless the sform's code is 1; nibabel and FSL read the sform. A file whose two
    disagree (FSL-processed data: sform code 2-4) was placed 20 mm from where nibabel puts it, silently."""
    import struct

    sitk.WriteImage(sitk.GetImageFromArray(blob_image((6, 7, 8)).astype(np.float32)), str(tmp_path / "a.nii"))
    raw = bytearray((tmp_path / "a.nii").read_bytes())
    notes = []
    pio.read_image(tmp_path / "a.nii", "fixed", notes)
    assert not any("sform" in n for n in notes)  # ITK writes the two alike (codes 1, 1)
    raw[254:256] = struct.pack("<h", 2)  # sform code "aligned": ITK now reads the qform ...
    raw[292:296] = struct.pack("<f", 20.0)  # ... and the sform puts the image 20 mm further along x
    (tmp_path / "b.nii").write_bytes(bytes(raw))
    notes = []
    img = pio.read_image(tmp_path / "b.nii", "fixed", notes)
    assert img.origin == pytest.approx((0.0, 0.0, 0.0))  # the qform's
    assert any("sform and qform disagree (by up to 20 mm" in n and "priorreg reads the qform" in n for n in notes)


@pytest.mark.parametrize("code, unit, factor", [(1, "meters", 1000.0), (3, "microns", 0.001)])
def test_a_nifti_in_meters_or_microns_is_noted(tmp_path, code, unit, factor):
    """ITK scales such a voxel size to mm; a new user's file in 'meters' became 3000 mm voxels and the
    registration said only that the images do not overlap."""
    sitk.WriteImage(sitk.GetImageFromArray(blob_image((6, 7, 8)).astype(np.float32)), str(tmp_path / "a.nii"))
    raw = bytearray((tmp_path / "a.nii").read_bytes())
    raw[123] = (raw[123] & ~7) | code
    (tmp_path / "b.nii").write_bytes(bytes(raw))
    notes = []
    img = pio.read_image(tmp_path / "b.nii", "fixed", notes)
    assert img.spacing == pytest.approx((factor,) * 3)
    size = " x ".join(f"{factor:.4g}" for _ in range(3))
    assert notes == [f"fixed: {tmp_path / 'b.nii'}'s header gives its voxel size in {unit}, which ITK converts to mm "
                     f"({size} mm voxels); if that is not the anatomy's size, the header's unit code (xyzt_units) is wrong"]


def test_big_endian_images_are_written_and_a_prior_is_not_saved_over_a_folder(tmp_path):
    """Raw TypeError / IsADirectoryError (with an internal temporary path) before."""
    a = np.arange(64).reshape(8, 8).astype(">i2")
    pio.write_image(priorreg.Image(a), tmp_path / "be.nii.gz")
    back = pio.read_image(tmp_path / "be.nii.gz").array
    assert back.dtype == np.int16 and np.array_equal(back, a)
    prior = priorreg.fit_prior(np.random.default_rng(0).random((16, 16)), np.random.default_rng(1).random((16, 16)),
                               bins=8, levels=1)
    with pytest.raises(PriorRegError, match=r"Prior.save\(\): .* is a folder; give the file to write"):
        prior.save(tmp_path)


def test_the_recorded_geometry_has_the_itk_view_of_the_header(tmp_path):
    """report.json's grids are in array order (numpy's), which shows an identity direction as a permutation;
    the "itk" entry is what ITK, 3D Slicer and the header say."""
    img = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32))
    img.SetSpacing((0.5, 0.8, 2.0))
    img.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.1, 0.2, 0.3).GetMatrix())
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    geo = pio.geometry(pio.read_image(tmp_path / "a.nrrd"))
    assert geo["shape"] == [5, 6, 7] and geo["itk"]["size"] == [7, 6, 5]
    assert geo["itk"]["spacing_mm"] == pytest.approx([0.5, 0.8, 2.0])
    assert geo["itk"]["direction"] == pytest.approx(list(img.GetDirection()), abs=1e-8)


def test_images_and_priors_compare_by_value(tmp_path):
    """== raised 'the truth value of an array is ambiguous' on Image and Prior; a round trip could not be checked."""
    a = np.random.default_rng(0).random((20, 24))
    img = priorreg.Image(a, (1.0, 2.0))
    assert img == priorreg.Image(a.copy(), (1.0, 2.0)) and img != priorreg.Image(a, (1.0, 2.5)) and img != a
    pio.write_image(img.with_array(a.astype(np.float32)), tmp_path / "s.nii.gz")
    assert pio.read_image(tmp_path / "s.nii.gz") == pio.read_image(tmp_path / "s.nii.gz")
    p = priorreg.fit_prior([a], [a ** 2], levels=1)
    p.save(tmp_path / "p.npz")
    assert priorreg.Prior.load(tmp_path / "p.npz") == p and priorreg.fit_prior([a], [a ** 3], levels=1) != p


def test_a_path_that_is_not_utf8_is_one_line_not_an_abort(tmp_path, monkeypatch):
    """A Latin-1 byte in a file name aborted the whole process inside SimpleITK's C++ (SIGABRT, status 134).
    Only paths SimpleITK is given count: an output's own name is given by a rename, and a relative input is
    opened as given, whatever the working directory is called."""
    from priorreg import transform, workflow

    good = tmp_path / "a.nii.gz"
    pio.write_image(priorreg.Image(blob_image((6, 7))), good)
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xffname.nii.gz")
    os.link(good, bad)
    with pytest.raises(PriorRegError, match=r"holds a byte that is not UTF-8 \(0xff\), which SimpleITK cannot open"):
        pio.read_image(os.fsdecode(bad), "fixed")
    with pytest.raises(PriorRegError, match=r"not UTF-8 \(0xff\)"):
        transform.read_itk_transform(os.fsdecode(bad), 2)
    folder = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(folder)
    with pytest.raises(PriorRegError, match=r"--out: the path .* holds a byte that is not UTF-8 \(0xe9\)"):
        workflow.check_out_file(os.fsdecode(os.path.join(folder, b"x.nii.gz")), [], False)
    named = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"x\xfd.nii.gz"))  # written by a rename: fine
    workflow.check_out_file(named, [], False)
    pio.write_image(priorreg.Image(blob_image((6, 7))), named)
    assert pio.read_image(good).shape == (6, 7) and os.path.exists(named)
    os.link(good, os.path.join(folder, b"a.nii.gz"))
    monkeypatch.chdir(folder)
    assert pio.read_image("a.nii.gz").shape == (6, 7)


def test_writes_go_ahead_without_a_usable_temporary_folder(tmp_path, monkeypatch):
    """Holding ITK's stderr lines needs a temporary file: a deleted temporary folder made every write fail
    ("No such file or directory") and leaked a file descriptor each time."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for k in range(3):
        pio.write_image(priorreg.Image(blob_image((8, 9))), tmp_path / f"out{k}.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["out0.nii.gz", "out1.nii.gz", "out2.nii.gz"]
    assert fds is None or len(os.listdir("/proc/self/fd")) == fds
