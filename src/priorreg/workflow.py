"""The work under the command line, shared by ``priorreg`` (cli.py), the cohort and the demo.

* the console: notes, the progress bar on a TTY, one line per pyramid level otherwise;
* inputs: read and check images, masks, priors and the device, with one-line errors that
  name the file;
* options: a preset, the flags given, and what a prior fixes (bins, Parzen sigma, levels);
* outputs, before any work: the output folder or file does not overlap the inputs, is not
  taken, and can be created and written;
* outputs, after the work: the files of a registration (five, and linear.tfm when the linear stage ran) and the run record, written
  as a whole (a temporary folder renamed into place), so a failure leaves no partial folder.

Nothing here parses arguments; errors are :class:`PriorRegError`. numpy, torch, SimpleITK
and Pillow are imported inside the functions that need them (``priorreg --help`` and
argument errors stay fast).
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import PriorRegError, name_problem
from .image import MIN_AXIS_VOXELS, level_factors

PROG = "priorreg"
LOG_EVERY_S = 30.0  # not on a terminal: a running level's line at least this often (a 1 mm level can take a minute)
OUTPUT_NAMES = ("warped.nii.gz", "field.nii.gz", "jacobian.nii.gz", "report.json", "report.html")
LINEAR_NAME = "linear.tfm"  # the linear stage alone (ITK transform), written when it ran
TEMP_PREFIX = ".priorreg-"  # temporary files and folders of a write in progress
_NEEDS_PRIOR = "--alpha {} < 1 needs a learned prior (--prior PRIOR from 'priorreg train'); alpha=1 is mutual information alone"


# --------------------------------------------------------------------------- console


def _isatty(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


class Console:
    """Notes and progress on stderr: a bar on a TTY, else one line per pyramid level; nothing when quiet."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.bar = not quiet and _isatty(self.stream)
        self._open = False  # a bar line is on the screen
        self._pending = None  # the last level's line, printed when the level ends (not a TTY)
        self._last = None  # the bar's last drawing (TTY)

    def note(self, msg: str) -> None:
        if not self.quiet:
            self.end_bar()
            print(f"{PROG}: {msg}", file=self.stream)

    def progress(self, max_iterations: int, levels: int, label: str = "", before: str | None = None,
                 spacing=(1.0, 1.0, 1.0), ahead=None):
        """A ``callback(level, iteration, energy)`` for :func:`priorreg.register` (None when quiet).

        On a TTY the bar fills by the levels finished, each weighed by its share of the work (its voxels on
        a grid of the fixed image's ``spacing``: 2**ndim times the next coarser level's on isotropic voxels,
        fewer where thick slices are kept, ``image.level_factors``): how many iterations a level takes is not known ahead,
        most stop long before ``max_iterations``.

        ``before`` names what runs ahead of the first level ("linear stage and set-up"): shown while it
        runs (TTY), then one line with its seconds when the first level starts (the solver's call with
        iteration 0). Each later level's seconds count from the previous level's last step, so they include
        its own set-up (upsampling, descriptors, intensity fit: 7 s of a 1 mm brain's finest level, which a
        new user found in no line) and the lines add up to the run; while it runs a TTY shows "set-up ..."
        (``cb.setup``, which :func:`priorreg.register` calls as a level's set-up begins). Not on a TTY (a
        log), a level that runs longer than LOG_EVERY_S also gets a line "so far" that often.

        ``ahead(linear, warnings)``: the lines (notes, "warning: ...") to print below ``before``'s line, from
        what :func:`priorreg.register` knows before its first level (``cb.before_levels``): a rejected linear
        optimum or a header's warning came after a long run's level lines.
        """
        if self.quiet:
            return None
        t0 = time.perf_counter()
        state = {"level": None, "start": t0, "last": t0, "logged": t0}
        self._last = None
        if before and self.bar:
            self.stream.write(f"\r{label}{before} ...")
            self.stream.flush()
            self._open = True

        def cb(level, iteration, energy):
            now = time.perf_counter()
            if level != state["level"]:
                first = state["level"] is None
                if first and before:
                    self._ahead(f"{label}{before}: {now - state['start']:.1f} s")
                for line in state.pop("ahead", []):
                    self.note(line)
                self.end_bar(done=True)
                start = (now if iteration == 0 else state["start"]) if first else state["last"]
                state.update(level=level, start=start, logged=start)
            state["last"] = now
            # iteration counts the accepted steps of this level (0 at its start), never above the cap
            shown = (levels - level, levels, min(iteration, max_iterations), energy, now - state["start"])
            if self.bar:
                step = levels - level
                self._last = (label, _work_done(step - 1, levels, spacing), _work_done(step, levels, spacing), *shown)
                self._draw(*self._last)
            else:
                self._pending = "{}level {}/{}: {} iteration(s), J={:.6g}, {:.1f} s".format(label, *shown)
                if now - state["logged"] >= LOG_EVERY_S:
                    print(f"{PROG}: {self._pending} so far", file=self.stream, flush=True)
                    state["logged"] = now

        def setup(level):
            """A later level's set-up begins (the registration's optional hook): the level before has ended."""
            if state["level"] is None:  # the first level's set-up is in ``before``
                return
            self.end_bar(done=True)
            if self.bar:
                step = levels - level
                self.stream.write(f"\r{label}level {step}/{levels} {_bar(_work_done(step - 1, levels, spacing))} set-up ...")
                self.stream.flush()
                self._open, self._last = True, None  # the level's first step replaces this line

        def before_levels(linear, warnings):
            state["ahead"] = ahead(linear, warnings)

        cb.setup = setup
        if ahead is not None:
            cb.before_levels = before_levels
        return cb

    def _ahead(self, line: str) -> None:
        """The line of what ran before the first level, replacing its '...' on a TTY."""
        if self.bar:
            self.stream.write(f"\r{line}    \n")
            self.stream.flush()
            self._open = False
        else:
            print(f"{PROG}: {line}", file=self.stream, flush=True)

    def _draw(self, label, before, after, step, levels, iteration, energy, seconds, done: bool = False) -> None:
        """``before`` / ``after``: the share of the work in the levels up to this one / up to its end."""
        self.stream.write(
            f"\r{label}level {step}/{levels} {_bar(after if done else before)} "
            f"it {iteration:4d}  J={energy:.5g}  {seconds:5.1f}s "
        )
        self.stream.flush()
        self._open = True

    def end_bar(self, done: bool = False, stopped: bool = False) -> None:
        """End the bar's line (TTY) or print the finished level's line (not a TTY); ``done``: the level ended,
        so its bar shows the work up to its end. ``stopped``: an error or Ctrl-C, which leaves the bar as it
        was and says that the level's line is what it had done when the run stopped (it may have ended)."""
        if self._open and self._last is None:  # only the "..." of what runs before the first level: an error
            self.stream.write("\r\033[K")  # in it (a bad option, Ctrl-C) reads better on a clean line
            self._open = False
        if self._open:
            if done:
                self._draw(*self._last, done=True)
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
        if self._pending is not None:
            print(f"{PROG}: {self._pending}{' (when the run stopped)' if stopped else ''}", file=self.stream, flush=True)
            self._pending = None


def _bar(share: float, width: int = 30) -> str:
    """'[######........]': ``share`` of the work done."""
    fill = int(round(width * share))
    return f"[{'#' * fill}{'.' * (width - fill)}]"


def _work_done(steps: int, levels: int, spacing) -> float:
    """The share of a registration's work in its first ``steps`` (coarsest) of ``levels`` pyramid levels."""
    work = [1.0 / math.prod(level_factors(spacing, level)) for level in reversed(range(levels))]
    return sum(work[:steps]) / sum(work)


def ahead_of_levels(opts) -> str:
    """What a registration with these options runs before its first pyramid level, as the progress names it."""
    return "set-up" if opts.linear == "none" else f"linear stage ({opts.linear}) and set-up"


# --------------------------------------------------------------------------- inputs


def size_text(shape) -> str:
    """A grid's size as ITK, 3D Slicer and the file headers give it (i x j x k: numpy's shape reversed)."""
    return "x".join(str(n) for n in reversed(tuple(shape)))


def describe(img) -> str:
    """'2D 40x48' for a (48, 40) array: the size as a viewer shows it (or '2D 40x48, a single-slice 3D grid'
    for an image read from, and written as, one)."""
    slab = ", a single-slice 3D grid" if getattr(img, "volume", None) is not None else ""
    return f"{img.ndim}D {size_text(img.shape)}{slab}"


OUTPUT_GRIDS = ("fixed", "reference")  # the roles whose grid the outputs take (register's fixed, apply's reference)


def load_input(path, role: str, notes: list, labels: bool = False) -> "Image":  # noqa: F821
    """Read an input image; refuses missing, damaged or non-numeric files and NaN/Inf (errors name the file),
    and with ``labels`` a colour image (its grey values would not be the labels)."""
    import numpy as np

    from . import io as pio

    img = pio.read_image(path, role, notes, outputs_on_grid=role in OUTPUT_GRIDS, labels=labels)
    if not (np.issubdtype(img.array.dtype, np.number) or img.array.dtype == bool):
        raise PriorRegError(f"{role}: {path} has non-numeric pixels ({img.array.dtype})")
    return img


def check_pair(fixed, moving, fpath, mpath, role_f: str = "fixed", role_m: str = "moving") -> float:
    """Refuse a 2D image against a 3D one, and single slices in different planes; return how far (mm) a
    single moving slice lies from the fixed slice's plane (``image.plane_offset``)."""
    if fixed.ndim != moving.ndim:
        single = [p for p, img in ((fpath, fixed), (mpath, moving)) if img.ndim == 2 and str(p).lower().endswith(".dcm")]
        hint = f" ({single[0]} is one slice: give the DICOM series' folder to read the volume)" if single else ""
        raise PriorRegError(
            f"{role_f} {fpath} is {describe(fixed)} but {role_m} {mpath} is {describe(moving)}; both must be 2D or both 3D{hint}"
        )
    from .image import plane_offset

    return plane_offset(fixed, moving, f"{role_f} {fpath}, {role_m} {mpath}", (role_f, role_m))


def load_mask(path, fixed, notes: list):
    """The fixed-space mask at ``path`` as 0/1 float64 (None for no path)."""
    import numpy as np

    if path is None:
        return None
    m = load_input(path, "mask", notes)
    if m.ndim != fixed.ndim:
        raise PriorRegError(f"mask: {path} is {m.ndim}D but the fixed image is {fixed.ndim}D")
    if not np.any(m.array > 0):
        raise PriorRegError(f"mask: {path} is empty (no voxel > 0); give a mask that covers the region to align")
    plane = m.plane_difference(fixed)  # a single slice: the 2D resampling below cannot move it between planes
    if plane:
        raise PriorRegError(f"mask: {path} lies in another slice plane than the fixed image ({plane}); give the mask of "
                            "the fixed image's slice")
    differs = m.grid_difference(fixed)  # used voxel by voxel: the same shape elsewhere in space is another region
    if differs:  # a mask made on another grid of the same anatomy (a 1 mm brain mask for a 2 mm image): where it is in space
        from .resample import warp

        m = warp(m.with_array((m.array > 0).astype(np.uint8)), None, reference=fixed,
                 interpolation="nearest", allow_empty=True)
        if not np.any(m.array > 0):
            raise PriorRegError(f"mask: {path} lies on another grid than the fixed image ({differs}) and covers none of "
                                "the fixed image's voxels there; give the mask of this fixed image")
        notes.append(f"mask: {path} is on another grid than the fixed image ({differs}); resampled onto it "
                     "(nearest neighbour, by world position)")
    return (m.array > 0).astype(np.float64)


def load_pair(fixed_path, moving_path, mask_path, notes: list) -> tuple:
    """``(fixed, moving, mask)`` of one registration, checked."""
    fixed = load_input(fixed_path, "fixed", notes)
    from .image import perpendicular

    if not perpendicular(fixed.direction):  # refused now, not once the registration has run
        raise PriorRegError(f"fixed {fixed_path} has axes that are not perpendicular (a sheared grid); the outputs "
                            "are NIfTI, which cannot keep such a grid: resample the fixed image onto one first")
    moving = load_input(moving_path, "moving", notes)
    check_pair(fixed, moving, fixed_path, moving_path)
    for role, img, path in (("fixed", fixed, fixed_path), ("moving", moving, moving_path)):
        check_size(img, role, path)
    notes += unsized_notes(fixed, moving, fixed_path, moving_path) + frameless_notes(fixed, moving, fixed_path, moving_path)
    return fixed, moving, load_mask(mask_path, fixed, notes)


def coverage_notes(reference, fov, what: str = "the moving image") -> list:
    """A warning when the field brings the moving image over less than result.MIN_COVERAGE of the reference's
    anatomy (its Otsu foreground), as register() warns; ``fov``: where the field lands inside the moving image
    (resample.warp_with_fov). A new user applied a field to a crop of the moving image and got an output that
    was mostly 0, without a word. (A registration run within a mask of part of the anatomy is told this too:
    apply does not know the mask; the message says what is, not a cause.)"""
    from .intensity import foreground
    from .result import MIN_COVERAGE, coverage_share

    anatomy = foreground(reference.array)
    if not anatomy.any():
        return []
    share = coverage_share(fov, anatomy)
    if share >= MIN_COVERAGE:
        return []
    return [f"apply: {what} covers only {100 * share:.0f}% of the reference image's anatomy through the "
            "field; the output is 0 elsewhere"]


UNSIZED_FORMATS = (".png", ".tif", ".tiff")  # files that usually carry no pixel size: read as 1 mm pixels
EXTENT_RATIO = 1.5  # images whose extents differ by more than this factor along an axis are named


def _unsized_format(path) -> bool:
    """Whether ``path`` is a PNG or TIFF: a file ITK reads without pixel size or direction."""
    from .io import extension

    return extension(path) in UNSIZED_FORMATS


def frameless_notes(fixed, moving, fixed_path, moving_path) -> list:
    """A note when a PNG or TIFF (no direction in the file: ITK's identity) is paired with an image whose
    direction differs: a new user registering a NIfTI slice to the PNG of the same slice read that "the moving
    image's header (its direction) is likely wrong", whichever of the two was the PNG."""
    import numpy as np

    png = [p for p in (fixed_path, moving_path) if _unsized_format(p)]
    if len(png) != 1 or np.allclose(fixed.direction, moving.direction, atol=1e-3):
        return []
    return [f"{png[0]} is a PNG or TIFF, whose file holds no direction (ITK's identity), and the other image's "
            "direction differs: their world frames disagree (a NIfTI slice is often turned 180 degrees against its "
            "PNG); the linear stage aligns the anatomy, and a warning about a header turned by it is about this"]


def unsized_notes(fixed, moving, fixed_path, moving_path) -> list:
    """A note when a PNG or TIFF read with 1 mm pixels (the file gave no size) spans far more or less than
    the other image: a new user registered a PNG to a half-size PNG of the same slice and got exit 0, "covers
    only 38% of the anatomy" and a 26 mm field, nothing naming the cause."""
    import numpy as np

    def unsized(img, path):
        return _unsized_format(path) and np.allclose(img.spacing, 1.0)

    if not (unsized(fixed, fixed_path) or unsized(moving, moving_path)):
        return []
    ef, em = (np.multiply(i.shape, i.spacing) for i in (fixed, moving))
    if np.all(np.maximum(ef, em) <= EXTENT_RATIO * np.minimum(ef, em)):
        return []
    mm = lambda e: "x".join(f"{v:g}" for v in e[::-1])  # noqa: E731  (as size_text: i first)
    return [f"the fixed image spans {mm(ef)} mm and the moving one {mm(em)} mm: the PNG or TIFF was read with 1 mm "
            "pixels (ITK reads no pixel size from most such files, a DPI setting included); if both show the same "
            "field of view, resample one to the other's size or give files with their spacing (NIfTI, NRRD, MHA)"]


def check_size(img, role: str, path) -> None:
    """Refuse an image too small to register before any note on levels is printed (a new user read "using
    --levels 1: an image of 3x3 voxels is too small for 3", then an error that 3 voxels are too few)."""
    if min(img.shape) < MIN_AXIS_VOXELS:
        raise PriorRegError(f"{role} {path} is {describe(img)}: under {MIN_AXIS_VOXELS} voxels along an axis, which "
                            f"priorreg needs along every axis")


@dataclass
class PairFiles:
    """One registration's inputs as read: the images, the mask array, the files' stamps as they were read
    (:func:`input_record`, report.json's ``inputs``) and what reading them noted (a DICOM folder's series,
    colour made grey: report.json's ``input_notes``)."""

    fixed: object
    moving: object
    mask: object
    inputs: dict
    read_notes: list


def read_pair(fixed_path, moving_path, mask_path, prior, prior_path, notes: list, initial_transform=None) -> PairFiles:
    """Stamp the input files, then read and check them (:func:`load_pair`, :func:`check_prior_dim`): what
    ``priorreg register`` and each cohort pair do before registering. ``notes`` gets what reading noted."""
    inputs = input_record(fixed_path, moving_path, mask_path, prior, prior_path, initial_transform)  # before reading
    fixed, moving, mask = load_pair(fixed_path, moving_path, mask_path, notes)
    check_prior_dim(prior, prior_path, fixed, fixed_path)
    return PairFiles(fixed, moving, mask, inputs, list(notes))


def load_prior(path):
    """The prior at ``path`` (None for no path)."""
    if path is None:
        return None
    from .prior import Prior

    return Prior.load(path)


LABEL_MAX_VALUES = 64  # an integer image with at most this many distinct values reads as a label map


def label_map_notes(image, path) -> list:
    """A note when ``image`` looks like a label map (integers, a few distinct values, read on at most
    2^18 voxels): linear interpolation would blend its labels into fractions."""
    import numpy as np

    a = np.asarray(image.array)
    if a.dtype.kind not in "iubf":
        return []
    step = max(1, a.size // 2**18)
    values = np.unique(a.reshape(-1)[::step])
    if not 1 < values.size <= LABEL_MAX_VALUES or not np.array_equal(values, np.round(values)):
        return []  # (labels stored as floats too: BraTS ships its label maps as float32 0-4)
    return [f"{path} holds {values.size} distinct integer values, like a label map: linear interpolation blends "
            "neighbouring labels into fractions; for labels use --interpolation nearest"]


def check_prior_dim(prior, prior_path, fixed, fixed_path) -> None:
    if prior is not None:
        prior.check_dim(fixed.ndim, f"prior {prior_path}", f"{fixed_path} ({describe(fixed)})", "priorreg train",
                        "register without --prior")


def check_device(device: str) -> None:
    """Refuse a device torch cannot use (imports torch only for a CUDA device)."""
    if device != "cpu":
        from .runtime import check_device as check

        check(device, "--device")


# --------------------------------------------------------------------------- options


def check_options(preset: str | None, overrides: dict, has_prior: bool) -> None:
    """Refuse bad option values, an unknown preset and alpha < 1 without a prior, before any work."""
    from .options import is_auto, preset_options

    for ndim in (2, 3):
        opts = preset_options(preset or "default", ndim).replace(**overrides)
        if "alpha" in overrides and not is_auto(opts.alpha) and opts.alpha < 1 and not has_prior:
            raise PriorRegError(_NEEDS_PRIOR.format(opts.alpha))


def chosen_preset(preset: str | None, fixed, moving, notes: list) -> tuple:
    """``(preset, why)``: --preset, or with none "functional" for a PET or SPECT file
    (:func:`priorreg.checks.preset_for`), its reason added to ``notes`` (None when --preset was given)."""
    from .checks import preset_for

    preset, said = preset_for(preset, None, fixed, moving, override="--preset default")
    notes += said
    return preset, (said[0] if said else None)


def resolve_options(ndim: int, preset: str | None, overrides: dict, prior, prior_path, notes: list, shape=None,
                    spacing=None) -> tuple:
    """``(overrides, options)`` of one registration: the preset's options for ``ndim``, the flags given,
    and the prior's bins, Parzen sigma and levels where no flag sets them (each such choice is a note);
    with the fixed image's ``shape``, fewer levels where the image is too small for the preset's.
    """
    from .checks import resolve
    from .options import is_auto, preset_options

    res = resolve(ndim, shape, preset=preset, given=overrides, prior=prior, spacing=spacing)  # what register() will run
    opts = res.options
    _prior_notes(res.from_prior, overrides, notes)
    base = preset_options(preset or "default", ndim)
    if prior is None and "alpha" not in overrides and not is_auto(base.alpha) and base.alpha < 1:
        notes.append(f"preset {preset} weighs a prior by alpha {base.alpha}; without --prior it runs alpha 1 (no prior)")
    if prior is None and is_auto(overrides.get("alpha")):
        notes.append("--alpha auto weighs a prior; without --prior it runs alpha 1 (mutual information alone)")
    if res.fewer_levels:
        notes.append(_fewer_levels_note(opts.levels, shape, res.levels_asked))
    overrides = {**overrides, **res.from_prior, **res.fewer_levels}  # register() given these chooses nothing anew
    if not is_auto(opts.alpha) and opts.alpha < 1 and prior is None:
        raise PriorRegError(_NEEDS_PRIOR.format(opts.alpha))
    if prior is not None:
        prior.check_compatible(ndim, opts, f"prior {prior_path}")
    return overrides, opts


def fewer_levels(opts, shape, given: dict, notes: list, spacing=None) -> dict:
    """{"levels": n} with a note where an image of ``shape`` is too small for ``opts.levels`` and no
    --levels was given (:func:`priorreg.checks.size_settings`, register()'s rule); else {}."""
    from .checks import size_settings

    size = size_settings(opts, shape, given, spacing)
    if size:
        notes.append(_fewer_levels_note(size["levels"], shape, opts.levels))
    return size


def _fewer_levels_note(levels: int, shape, asked: int) -> str:
    return f"using --levels {levels}: an image of {size_text(shape)} voxels is too small for {asked}"


def _prior_notes(from_prior: dict, given: dict, notes: list) -> None:
    """A note for each setting the prior chose (:func:`priorreg.checks.prior_settings`), in flags."""
    for name, value in from_prior.items():
        if name == "normalization":
            if name in given:  # the one setting a prior takes over from a flag
                notes.append(f"--normalization {given[name]} is not used: the prior was learned with {value}, "
                             "and the images are normalised as its tables were")
            continue
        notes.append(f"using --{name.replace('_', '-')} {value} from the prior")


# --------------------------------------------------------------------------- outputs: checks before any work


def same_path(a, b) -> bool:
    a, b = os.path.abspath(os.fspath(a)), os.path.abspath(os.fspath(b))
    if a == b:
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(folder, out, what: str = "--out") -> None:
    """Create and remove a temporary file in ``folder``: refuse an output that could not be written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".check")
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno == errno.ENOENT and os.path.isdir(folder):  # /proc, /sys: the folder exists, new files do not
            why = "its file system takes no new files"
        raise PriorRegError(f"{what} {out}: cannot write in {folder} ({why})") from None
    os.close(fd)
    os.unlink(tmp)


def check_out_dir(out, inputs, overwrite: bool, what: str = "--out",
                  taken: str = "use --overwrite or another --out") -> None:
    """Refuse an output folder that overlaps the inputs, is taken (unless overwrite; ``taken`` says what
    to do then) or cannot be created and written. Creates nothing."""
    out = os.fspath(out)
    if not out.strip():  # os.path.exists("") is False, and the outputs would land in the working directory
        raise PriorRegError(f"{what} is empty; give the output directory's name")
    for path in inputs:
        if path is None:
            continue
        if same_path(out, path):
            raise PriorRegError(f"{what} {out} is an input; choose another output directory")
        if any(same_path(os.path.join(out, name), path) for name in OUTPUT_NAMES):
            raise PriorRegError(f"{what} {out} would overwrite the input {path}; choose another output directory")
    check_name_length(out, what)
    if os.path.islink(out) and not os.path.exists(out):
        raise PriorRegError(f"{what} {out} is a link to {os.readlink(out)}, which does not exist; create that "
                            f"directory or choose another {what}")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise PriorRegError(f"{what} {out} exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise PriorRegError(f"output directory {out} exists and is not empty; {taken}")
        check_writable(out, out, what)
        return
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        why = "is a file" if os.path.exists(parent) else "does not exist"
        raise PriorRegError(f"cannot create output directory {out}: its parent {parent} {why}")
    check_writable(parent, out, what)


def check_name_length(out, what: str = "--out") -> None:
    """Refuse a name in the path longer than the file system takes (255 bytes on most), before any work: it
    failed at the final rename, after the whole run; and a folder for the temporary files SimpleITK writes
    (``out`` itself where it is a folder already, else the one it is in) whose path it cannot open
    (``errors.name_problem``: the final name is given by a rename, which takes any)."""
    path = os.path.abspath(os.fspath(out))
    problem = name_problem(path if os.path.isdir(path) else os.path.dirname(path), what)
    if problem:
        raise PriorRegError(problem)
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    try:
        longest = os.pathconf(parent or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for name in path.split(os.sep):
        if len(os.fsencode(name)) > longest:
            raise PriorRegError(f"{what}: the name {name[:40]}... is {len(os.fsencode(name))} bytes long; the file "
                                f"system takes at most {longest}")


def check_out_file(out, inputs, overwrite: bool, what: str = "--out") -> None:
    """Refuse an output file that is an input, a folder, taken (unless overwrite) or cannot be written."""
    for path in inputs:
        if path is not None and same_path(out, path):
            raise PriorRegError(f"{what} {out} is an input; inputs are never written")
    check_name_length(out, what)
    if os.path.isdir(out) or os.fspath(out).endswith(("/", os.sep)):  # "dir/" that does not exist named a temporary file
        raise PriorRegError(f"{what} {out} is a directory; give a file name")
    if os.path.exists(out) and not overwrite:
        raise PriorRegError(f"{out} exists; use --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise PriorRegError(f"cannot write {out}: directory {parent} does not exist")
    check_writable(parent, out, what)


def check_image_format(path, ndim: int | None = None, what: str = "--out") -> None:
    """Refuse an output image format priorreg cannot write (PNG, TIFF: 2D only; not checked for ndim None)."""
    from . import io as pio

    pio.check_write_ext(path, ndim, what)


# --------------------------------------------------------------------------- outputs: writing


def make_out_dir(out) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PriorRegError(f"cannot create output directory {out}: {e.strerror}") from None


@contextlib.contextmanager
def run_folder(out, overwrite: bool = True):
    """Yield a temporary folder for a run's files; on success they land in ``out`` as a whole.

    A new ``out``: the folder is a sibling, renamed into place. An existing ``out`` (empty, or with
    other files and --overwrite; a link to a folder): a folder inside it whose files are renamed in,
    each replacing the earlier run's, so the user's folder stays (its owner, group, mode, a shell
    inside it); an earlier run's outputs that this run did not write are removed. On failure the temporary
    folder goes and ``out`` is as it was. Without ``overwrite``, outputs that appeared in ``out`` while the run
    ran (another run into the same new folder) are not replaced: refused.
    """
    out = os.path.abspath(os.fspath(out))
    fresh = not os.path.isdir(out)
    tmp = _temp_folder(os.path.dirname(out) if fresh else out)
    try:
        yield tmp
        fresh = fresh and not os.path.lexists(out)
        theirs = [] if overwrite or fresh else sorted(set(os.listdir(out)) & set(os.listdir(tmp)))
        if theirs:  # (another file, e.g. a desktop's .DS_Store, is not this run's to refuse)
            raise PriorRegError(f"{out} gained {', '.join(theirs)} from another run while this one ran; they are not "
                                "replaced (use --overwrite or another --out)")
        if fresh:
            _rename_folder(tmp, out)
        else:
            written = os.listdir(tmp)
            for name in written:
                os.replace(os.path.join(tmp, name), os.path.join(out, name))
            os.rmdir(tmp)
            _remove_stale_outputs(out, written)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_outputs(out, written) -> None:
    """An earlier run's outputs that this run did not write (its linear.tfm, when this one had no linear
    stage) would sit beside the new ones as if they were part of them. Other files stay."""
    for name in set(OUTPUT_NAMES + (LINEAR_NAME,)) - set(written):
        path = os.path.join(out, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.unlink(path)


def _temp_folder(where) -> str:
    return tempfile.mkdtemp(dir=where, prefix=TEMP_PREFIX + "run-")


def _rename_folder(tmp, out) -> None:
    from . import io as pio

    os.chmod(tmp, pio.default_mode(directory=True))
    os.rename(tmp, out)


def write_images(folder, result) -> None:
    """warped, field and jacobian of ``result`` into ``folder``."""
    import numpy as np

    from . import io as pio

    from .image import plane_offset

    fix = result.fixed
    offset = 0.0 if result.moving is None else plane_offset(fix, result.moving, "write")  # parallel single slices
    # Not compressed: gzip shrank these float32 images by 8-20 % and took 0.45 s of CPU on a 2 mm brain (its
    # field alone 0.26 s): time no reader needs. They stay .nii.gz (stored blocks), which every tool reads.
    warped = result.warped.with_array(np.asarray(result.warped.array, dtype=np.float32))
    pio.write_image(warped, os.path.join(folder, "warped.nii.gz"), "warped", compress=False)
    pio.write_field(result.field_world(), fix, os.path.join(folder, "field.nii.gz"), compress=False, through_plane=offset)
    jacobian = fix.with_array(result.jacobian.astype(np.float32))
    pio.write_image(jacobian, os.path.join(folder, "jacobian.nii.gz"), "jacobian", compress=False)
    if result.linear is not None:  # also inside field.nii.gz; on its own for tools that want the linear part
        from .transform import write_itk_transform

        lin = result.linear_in_files()  # read from a single-slice 3D file: a 3D transform, as the field is
        write_itk_transform(os.path.join(folder, LINEAR_NAME), lin, lin.ndim)


def write_outputs(out, result, *, prior=None, mask=None, inputs=None, extra=None, extra_html="",
                  read_notes=(), overwrite: bool = True) -> dict:
    """Write the outputs of a registration (OUTPUT_NAMES, and LINEAR_NAME when the linear stage ran) into
    ``out`` as a whole; returns the run record. ``read_notes``: what reading the inputs noted; ``overwrite``:
    whether files another run wrote into ``out`` meanwhile may be replaced (:func:`run_folder`)."""
    from . import report as rep

    make_out_dir(os.path.dirname(os.path.abspath(out)))
    record = rep.report_dict(result, inputs, {**(extra or {}), **({"input_notes": list(read_notes)} if read_notes else {})})
    names = OUTPUT_NAMES + ((LINEAR_NAME,) if result.linear is not None else ())
    record["outputs"] = {n: os.path.abspath(os.path.join(os.fspath(out), n)) for n in names}  # as the inputs: absolute
    try:
        with run_folder(out, overwrite) as tmp, ThreadPoolExecutor(max_workers=1) as pool:
            # The images (mostly gzip, which releases the GIL) are written while the report is drawn.
            images = pool.submit(write_images, tmp, result)
            rep.write_json(os.path.join(tmp, "report.json"), record)
            rep.write_html(os.path.join(tmp, "report.html"), result, record, prior, mask, extra_html)
            images.result()
    except OSError as e:  # a full disk, a quota: which outputs, not a bare errno (nothing is left behind)
        raise PriorRegError(f"cannot write the outputs into {os.fspath(out)} ({e.strerror or e})") from None
    return record


def file_stamp(path) -> dict:
    """A file's (or a DICOM folder's) absolute path, size in bytes and last modification (ns since the
    epoch; a folder: of its newest file): what --resume compares to tell a changed input from the same one."""
    path = os.path.abspath(path)
    files = ([os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [path])
    stats = [os.stat(f) for f in files if os.path.isfile(f)]
    return {"path": path, "bytes": sum(st.st_size for st in stats), "modified_ns": max((st.st_mtime_ns for st in stats), default=0)}


def input_record(fixed, moving, mask=None, prior=None, prior_path=None, initial_transform=None) -> dict:
    """The ``inputs`` of a run record: each file's :func:`file_stamp`, and the prior's metadata."""
    rec = {"fixed": file_stamp(fixed), "moving": file_stamp(moving)}
    if mask:
        rec["mask"] = file_stamp(mask)
    if initial_transform:
        rec["initial_transform"] = file_stamp(initial_transform)
    if prior is not None:
        rec["prior"] = {**file_stamp(prior_path), **prior.metadata()}
    return rec


def summary(result) -> str:
    """One line: time, iterations per level, final energy, folding."""
    js = result.jacobian_stats
    its = "+".join(str(h.iterations) for h in result.history)
    linear = _linear_summary(result.linear, stage_ran=result.options.linear != "none")
    return (
        f"done in {result.seconds:.1f} s ({its} iterations){linear}"
        f"{_alpha_summary(result)}, final energy "
        f"{result.final_energy:.6g}, folding {js['percent_nonpositive']:.3f}% (Jacobian min {js['min']:.3f})"
    )


def _alpha_summary(result) -> str:
    """alpha="auto": the alpha chosen per level, coarsest first."""
    weights = getattr(result, "prior_weights", None) or []
    return "" if not weights else ", alpha per level (auto) " + "/".join(f"{w['alpha']:.2f}" for w in weights)


_CALLS = {"Prior.load(): ": "--prior: ", "read_itk_transform(): ": "--initial-transform: "}  # as the command names them
_API_CALL = re.compile(r"^(register|warp|invert_field|Image)\(\): ")  # the library's function, which a command's user did not call


def spoken(msg: str) -> str:
    """A library message as the commands say it (and record it): the Python function it names replaced by the flag, or dropped."""
    for call, flag in _CALLS.items():
        if msg.startswith(call):
            return flag + msg[len(call):]
    return _API_CALL.sub("", msg)


def speak_warnings(result) -> list:
    """``result.warnings`` reworded as the commands say them (:func:`spoken`), in place, so that report.json and
    report.html keep them as printed; returns them."""
    result.warnings[:] = [spoken(w) for w in result.warnings]
    return result.warnings


def linear_notes(lin, options) -> list:
    """The linear stage's (``lin``, or None) notes when its optimum was rejected (world alignment or the initial
    transform kept: the summary would otherwise read like a found identity) or an affine stage fell back to
    rigid (the summary says "linear rigid" after --linear affine); report.json's "linear" keeps every note."""
    fell_back = lin is not None and options is not None and options.linear == "affine" and lin.kind == "rigid"
    return [f"linear stage: {n}" for n in lin.notes] if lin is not None and (lin.rejected or fell_back) else []


def working_grid_notes(result) -> list:
    """A note where the finest level was coarser than the fixed grid (priorreg.working_grid: a moving image
    of far coarser voxels), so that a user reading the levels' shapes knows why."""
    finest = result.history[-1] if result.history else None
    if finest is None or tuple(finest.shape) == tuple(result.fixed.shape):
        return []
    from .image import spacing_text

    return [f"the deformable stage worked on {spacing_text(finest.spacing)} mm voxels, no finer than the moving "
            f"image's; the field is interpolated onto the fixed image's {spacing_text(result.fixed.spacing)} mm grid"]


def _linear_summary(lin, stage_ran: bool = True) -> str:
    """The linear part of the summary line: the stage's result, or (``stage_ran`` False) the initial transform used as it is."""
    if lin is None:
        return ""
    from .transform import rotation_angle

    name = f"linear {lin.kind}" if stage_ran else f"initial transform ({lin.kind})"
    if stage_ran and lin.rejected:  # its optimum failed a check: what is kept is the start, not a found transform
        return f", {name}: not kept (see its note)"
    rot = rotation_angle(lin.matrix)
    shift = sum(t * t for t in lin.translation_mm) ** 0.5
    shown = f"{shift:.1f}" if shift >= 1 else f"{shift:.2g}"  # 0.024 mm is 2 voxels of 0.01 mm
    return f", {name}: rotation {rot:.1f} deg, translation {shown} mm"
