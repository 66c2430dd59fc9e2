"""The ``priorreg`` command line: train, register, apply, demo.

Every engine option of :class:`priorreg.RegistrationOptions` becomes a ``register``
flag (``max_iterations`` -> ``--max-iterations``) with the dataclass's default and
docstring: one source of defaults. Errors print one line ``priorreg: error: ...``
on stderr and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time

from .errors import PriorRegError
from .options import PRIOR_TERM_CHOICES, RegistrationOptions

PROG = "priorreg"
EXIT_ERROR = 2
OUTPUT_NAMES = ("warped.nii.gz", "field.nii.gz", "jacobian.nii.gz", "report.json", "report.html")
# Options given their own flags/help text (not generated) and choices of string options.
_CHOICES = {
    "force": ("practical", "exact"),
    "normalization": None,  # filled from intensity.NORMALIZATIONS
    "dtype": ("float32", "float64"),
    "prior_term": PRIOR_TERM_CHOICES,
    "alpha_schedule": ("constant", "mi-finest"),
    "prior_intensity_fit": ("none", "affine"),
    "regularization_scaling": ("none", "alpha"),
}
_TYPES = {"float": float, "int": int, "str": str, "bool": bool}
# train uses these fields of RegistrationOptions as fit_prior parameters.
TRAIN_OPTIONS = ("bins", "parzen_sigma", "levels", "normalization")


class _Error(Exception):
    """A usage error raised by the argument parser (reported like PriorRegError)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise _Error(f"{message} (see '{self.prog} --help')")


def _option_docs() -> dict:
    """Field descriptions from RegistrationOptions' numpydoc 'Attributes' section."""
    doc = RegistrationOptions.__doc__ or ""
    out, name, buf = {}, None, []
    for line in doc.splitlines():
        m = re.match(r"^    (\w+) : (.*)$", line)
        if m:
            if name:
                out[name] = " ".join(buf)
            name, buf = m.group(1), []
        elif name and line.startswith("        "):
            buf.append(line.strip())
    if name:
        out[name] = " ".join(buf)
    return out


def _local_regions_arg(text: str):
    """--local-regions: auto, K, KxK or KxKxK."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _parse_regions(text)
    except PriorRegError:
        raise argparse.ArgumentTypeError(f"must be auto, K, KxK or KxKxK with integers K >= 1, got {text!r}") from None


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_engine_options(parser, names=None) -> None:
    """Add one flag per RegistrationOptions field (default None = the dataclass default, shown in --help)."""
    from .intensity import NORMALIZATIONS

    docs = _option_docs()
    group = parser.add_argument_group("engine options (defaults from priorreg.RegistrationOptions)")
    for f in dataclasses.fields(RegistrationOptions):
        if names is not None and f.name not in names:
            continue
        kind = _local_regions_arg if f.name == "local_regions" else _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
        choices = _CHOICES.get(f.name)
        if f.name == "normalization":
            choices = NORMALIZATIONS
        help_ = docs.get(f.name, "").replace("%", "%%")
        help_ = f"{help_} (default: {f.default})"
        kw = dict(type=kind, default=None, dest=f.name, help=help_, metavar=f.name.upper())
        if choices:
            kw["choices"] = choices
            kw["metavar"] = "{" + ",".join(choices) + "}"
        if f.name == "device":
            kw["metavar"] = "{cpu,cuda}"
        if f.name == "local_regions":
            kw["metavar"] = "{auto,K,KxK,KxKxK}"
        group.add_argument(option_flag(f.name), **kw)


def engine_overrides(args, names=None) -> dict:
    """The engine options given on the command line (field name -> value)."""
    out = {}
    for f in dataclasses.fields(RegistrationOptions):
        if names is not None and f.name not in names:
            continue
        v = getattr(args, f.name, None)
        if v is not None:
            out[f.name] = v
    return out


def options_from_args(args) -> RegistrationOptions:
    """RegistrationOptions from parsed ``register`` arguments (defaults from the dataclass)."""
    return RegistrationOptions(**engine_overrides(args))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog=PROG,
        description="Non-rigid multi-modal registration with learned joint-intensity priors "
        "(J = alpha*(-MI) + (1-alpha)*KL(p_u||p_L) + lambda*R; --prior-term picks KL, its conditional form or CE).",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,register,apply,cohort,demo}", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train",
        help="learn a joint-intensity prior from pre-registered pairs",
        description="Learn a joint-intensity prior from pre-registered (fixed-modality, moving-modality) pairs; "
        "Fi and Mi must be aligned on one grid. Writes one .npz file at exactly --out.",
    )
    t.add_argument("--fixed", nargs="+", required=True, metavar="F", help="training images of the fixed modality")
    t.add_argument("--moving", nargs="+", required=True, metavar="M", help="the aligned images of the moving modality")
    t.add_argument("--mask", nargs="+", metavar="K", help="optional masks, one per pair")
    t.add_argument("--out", required=True, metavar="PRIOR", help="prior file to write (e.g. prior.npz)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing PRIOR file")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    t.add_argument(
        "--regions",
        default="1",
        metavar="K[xK[xK]]",
        help="learn one table per block of the field of view: K blocks per axis, or one K per axis "
        "(e.g. 8 or 8x8x4). 1 (default) = one global table, the paper's prior. Only for training and "
        "test images in one frame (atlas space, one field of view).",
    )
    add_engine_options(t, TRAIN_OPTIONS)

    r = sub.add_parser(
        "register",
        help="register MOVING onto FIXED",
        description="Register MOVING onto FIXED (starting from their world alignment). Writes DIR/warped.nii.gz, "
        "field.nii.gz (ITK/ANTs displacement field: world LPS mm, pull-back), jacobian.nii.gz, report.json, report.html.",
    )
    r.add_argument("fixed", metavar="FIXED", help="reference image (file or DICOM series directory)")
    r.add_argument("moving", metavar="MOVING", help="image to deform")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    r.add_argument("--prior", metavar="PRIOR", help="learned prior (from 'priorreg train'); needed for alpha < 1")
    r.add_argument("--mask", metavar="MASK", help="fixed-space mask limiting the histogram samples")
    r.add_argument("--overwrite", action="store_true", help="write into an existing non-empty DIR")
    r.add_argument("--quiet", action="store_true", help="no progress bar, notes or summary")
    add_engine_options(r)

    a = sub.add_parser(
        "apply",
        help="apply a displacement field to an image (label maps too)",
        description="Resample MOVING on the --reference grid through FIELD (a field.nii.gz from 'priorreg register').",
    )
    a.add_argument("moving", metavar="MOVING", help="image in the moving space (intensities or labels)")
    a.add_argument("--field", required=True, metavar="FIELD", help="displacement field (field.nii.gz)")
    a.add_argument("--reference", required=True, metavar="FIXED", help="the fixed image the field was computed on")
    a.add_argument("--out", required=True, metavar="OUT", help="output image (.nii.gz, .nii, .mha, .nrrd, .png, .tif)")
    a.add_argument("--interpolation", choices=("linear", "nearest"), default="linear",
                   help="'nearest' for label maps (default: linear)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    a.add_argument("--quiet", action="store_true", help="print nothing but errors")

    from .cohort import add_parser as add_cohort_parser

    add_cohort_parser(sub)

    d = sub.add_parser(
        "demo",
        help="run a registration on bundled BrainWeb data and write a report",
        description="Learn a prior on the bundled BrainWeb T1/PD slice pair, deform the PD slice by a known smooth "
        "field, register it back onto T1 with alpha=0.4 (prior) and alpha=1 (MI), and report the endpoint errors.",
    )
    d.add_argument("--out", default="priorreg-demo", metavar="DIR", help="output directory (default: ./priorreg-demo)")
    d.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="device (default: cpu)")
    d.add_argument("--overwrite", action="store_true", help="write into an existing non-empty DIR")
    d.add_argument("--quiet", action="store_true", help="print nothing but errors and the report path")
    return p


# --------------------------------------------------------------------------- helpers


class Console:
    """Notes and progress on stderr; the progress bar only on a TTY and when not quiet."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.bar = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._level = None
        self._open = False

    def note(self, msg: str) -> None:
        if not self.quiet:
            self.end_bar()
            print(f"{PROG}: {msg}", file=self.stream)

    def progress(self, max_iterations: int, levels: int, label: str = ""):
        """A ``callback(level, iteration, energy)`` for :func:`priorreg.register`."""
        if not self.bar:
            return None
        t0 = [time.perf_counter()]

        def cb(level, iteration, energy):
            if level != self._level:
                self.end_bar()
                self._level = level
                t0[0] = time.perf_counter()
            width = 30
            frac = min(1.0, (iteration + 1) / max(1, max_iterations))
            fill = int(round(width * frac))
            step = levels - level
            self.stream.write(
                f"\r{label}level {step}/{levels} [{'#' * fill}{'.' * (width - fill)}] "
                f"it {iteration + 1:4d}/{max_iterations}  J={energy:.5g}  {time.perf_counter() - t0[0]:5.1f}s "
            )
            self.stream.flush()
            self._open = True

        return cb

    def end_bar(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
        self._level = None


def _same(a, b) -> bool:
    a, b = os.path.abspath(os.fspath(a)), os.path.abspath(os.fspath(b))
    if a == b:
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def prepare_out_dir(out: str, inputs, overwrite: bool, what: str = "--out") -> None:
    """Refuse an existing non-empty DIR (unless overwrite) and any overlap with the inputs (creates nothing)."""
    out = os.fspath(out)
    for path in inputs:
        if path is None:
            continue
        if _same(out, path):
            raise PriorRegError(f"{what} {out} is an input; choose another output directory")
        for name in OUTPUT_NAMES:
            if _same(os.path.join(out, name), path):
                raise PriorRegError(f"{what} {out} would overwrite the input {path}; choose another output directory")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise PriorRegError(f"{what} {out} exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise PriorRegError(f"output directory {out} exists and is not empty; use --overwrite or another --out")
    elif not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise PriorRegError(f"cannot create output directory {out}: its parent directory does not exist")


def make_out_dir(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PriorRegError(f"cannot create output directory {out}: {e.strerror}") from None


def check_out_file(out: str, inputs, overwrite: bool) -> None:
    for path in inputs:
        if path is not None and _same(out, path):
            raise PriorRegError(f"--out {out} is an input; inputs are never written")
    if os.path.isdir(out):
        raise PriorRegError(f"--out {out} is a directory; give a file name")
    if os.path.exists(out) and not overwrite:
        raise PriorRegError(f"{out} exists; use --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise PriorRegError(f"cannot write {out}: directory {parent} does not exist")


def _describe(img) -> str:
    return f"{img.ndim}D {'x'.join(str(n) for n in img.shape)}"


def load_input(path, role: str, notes) -> "Image":  # noqa: F821
    """Read and validate an input image; errors name the file."""
    import numpy as np

    from . import io as pio

    img = pio.read_image(path, role, notes)
    a = img.array
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise PriorRegError(f"{role}: {path} has non-numeric pixels ({a.dtype})")
    if not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise PriorRegError(f"{role}: {path} contains {bad} NaN/Inf voxel(s); clean the image first")
    return img


def _check_pair(fixed, moving, fpath, mpath, role_f="fixed", role_m="moving"):
    if fixed.ndim != moving.ndim:
        raise PriorRegError(
            f"{role_f} {fpath} is {_describe(fixed)} but {role_m} {mpath} is {_describe(moving)}; both must be 2D or both 3D"
        )


def _load_mask(path, fixed, notes):
    import numpy as np

    if path is None:
        return None
    m = load_input(path, "mask", notes)
    if m.shape != fixed.shape:
        raise PriorRegError(f"mask: {path} has shape {m.shape} but the fixed image has shape {fixed.shape}")
    if not np.any(m.array > 0):
        raise PriorRegError(f"mask: {path} is empty (no voxel > 0); give a mask that covers the region to align")
    return (m.array > 0).astype(np.float64)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PriorRegError(f"--device {device} was asked but no CUDA device is available; use --device cpu")


# --------------------------------------------------------------------------- commands


def _parse_regions(text: str):
    parts = text.lower().split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise PriorRegError(f"--regions must be K or KxK or KxKxK with integers K >= 1, got {text!r}")
    vals = [int(p) for p in parts]
    return vals[0] if len(vals) == 1 else tuple(vals)


def cmd_train(args, con: Console) -> int:
    from . import fit_prior

    notes = []
    if len(args.fixed) != len(args.moving):
        raise PriorRegError(f"train: got {len(args.fixed)} --fixed and {len(args.moving)} --moving images; give one moving per fixed")
    if args.mask is not None and len(args.mask) != len(args.fixed):
        raise PriorRegError(f"train: got {len(args.mask)} --mask for {len(args.fixed)} pairs; give one mask per pair")
    inputs = list(args.fixed) + list(args.moving) + list(args.mask or [])
    check_out_file(args.out, inputs, args.overwrite)
    fixed = [load_input(p, f"fixed[{j}]", notes) for j, p in enumerate(args.fixed)]
    moving = [load_input(p, f"moving[{j}]", notes) for j, p in enumerate(args.moving)]
    for j, (f, m) in enumerate(zip(fixed, moving)):
        _check_pair(f, m, args.fixed[j], args.moving[j], f"fixed[{j}]", f"moving[{j}]")
        if f.shape != m.shape:
            raise PriorRegError(
                f"train: pair {j} is not on one grid ({args.fixed[j]} is {_describe(f)}, {args.moving[j]} is "
                f"{_describe(m)}); training pairs must be pre-registered and resampled to one grid"
            )
        if j and f.ndim != fixed[0].ndim:
            raise PriorRegError(f"train: pair {j} is {f.ndim}D but pair 0 is {fixed[0].ndim}D")
    masks = None
    if args.mask:
        masks = [_load_mask(p, f, notes) for p, f in zip(args.mask, fixed)]
    for n in notes:
        con.note(n)
    kw = {k: getattr(RegistrationOptions, k) for k in TRAIN_OPTIONS}
    kw.update(engine_overrides(args, TRAIN_OPTIONS))
    kw["regions"] = _parse_regions(args.regions)
    t0 = time.perf_counter()
    prior = fit_prior(fixed, moving, masks=masks, **kw)
    prior.save(args.out)
    if not con.quiet:
        print(
            f"{PROG}: prior from {prior.n_pairs} pair(s), {prior.dim}D, bins={prior.bins}, levels={prior.levels}"
            + (f", regions={'x'.join(map(str, prior.regions))}" if prior.n_regions > 1 else "")
            + " "
            f"written to {args.out} ({time.perf_counter() - t0:.1f} s)"
        )
    return 0


def write_outputs(out_dir, result, *, prior=None, mask=None, inputs=None, extra=None, extra_html="") -> dict:
    """Write the five register outputs into ``out_dir`` (which must exist); returns the report dict."""
    import numpy as np

    from . import io as pio
    from . import report as rep

    fix = result.fixed
    warped = result.warped.with_array(np.asarray(result.warped.array, dtype=np.float32))
    pio.write_image(warped, os.path.join(out_dir, "warped.nii.gz"), "warped")
    pio.write_field(result.field_world(), fix, os.path.join(out_dir, "field.nii.gz"))
    pio.write_image(fix.with_array(result.jacobian.astype(np.float32)), os.path.join(out_dir, "jacobian.nii.gz"), "jacobian")
    report = rep.report_dict(result, inputs, extra)
    report["outputs"] = {n: os.path.join(out_dir, n) for n in OUTPUT_NAMES}
    rep.write_json(os.path.join(out_dir, "report.json"), report)
    rep.write_html(os.path.join(out_dir, "report.html"), result, report, prior, mask, extra_html)
    return report


def _summary(result) -> str:
    js = result.jacobian_stats
    its = "+".join(str(h.iterations) for h in result.history)
    return (
        f"done in {result.seconds:.1f} s ({its} iterations), final energy {result.final_energy:.6g}, "
        f"folding {js['percent_nonpositive']:.3f}% (Jacobian min {js['min']:.3f})"
    )


def resolve_options(overrides: dict, prior, prior_path, notes: list) -> tuple[float, dict, RegistrationOptions]:
    """``(alpha, overrides, options)`` exactly as ``priorreg register`` derives them (bins/levels from the prior)."""
    overrides = dict(overrides)
    if prior is not None:
        for name in ("bins", "parzen_sigma"):
            if name not in overrides and getattr(prior, name) != getattr(RegistrationOptions, name):
                overrides[name] = getattr(prior, name)
                notes.append(f"using {option_flag(name)} {getattr(prior, name)} from the prior")
        if "levels" not in overrides and prior.levels < RegistrationOptions.levels:
            overrides["levels"] = prior.levels
            notes.append(f"using --levels {prior.levels} (the prior has tables for {prior.levels} level(s))")
    alpha = overrides.pop("alpha", RegistrationOptions.alpha)
    if alpha < 1 and prior is None:
        raise PriorRegError(
            f"--alpha {alpha} < 1 needs a learned prior (--prior PRIOR from 'priorreg train'); alpha=1 is mutual information alone"
        )
    opts = RegistrationOptions(alpha=alpha, **overrides)
    if prior is not None:
        prior.check_compatible(prior.dim, opts, f"prior {prior_path}:")
    return alpha, overrides, opts


def cmd_register(args, con: Console) -> int:
    from . import Prior, register

    overrides = engine_overrides(args)
    RegistrationOptions(**overrides)  # validate values before reading images
    if "device" in overrides:
        _check_device(overrides["device"])
    prepare_out_dir(args.out, [args.fixed, args.moving, args.prior, args.mask], args.overwrite)
    notes = []
    fixed = load_input(args.fixed, "fixed", notes)
    moving = load_input(args.moving, "moving", notes)
    _check_pair(fixed, moving, args.fixed, args.moving)
    mask = _load_mask(args.mask, fixed, notes)
    prior = None
    if args.prior is not None:
        prior = Prior.load(args.prior)
        if prior.dim != fixed.ndim:
            raise PriorRegError(
                f"prior {args.prior} was learned on {prior.dim}D images but {args.fixed} is {_describe(fixed)}"
            )
    alpha, overrides, opts = resolve_options(overrides, prior, args.prior, notes)
    for n in notes:
        con.note(n)
    cb = con.progress(opts.max_iterations, opts.levels)
    # warn=False: result.warnings are printed below as one line each, not as Python warnings
    result = register(fixed, moving, prior=prior, alpha=alpha, mask=mask, callback=cb, warn=False, **overrides)
    con.end_bar()
    for w in result.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    make_out_dir(args.out)
    inputs = {"fixed": {"path": os.path.abspath(args.fixed)}, "moving": {"path": os.path.abspath(args.moving)}}
    if args.mask:
        inputs["mask"] = {"path": os.path.abspath(args.mask)}
    if args.prior:
        inputs["prior"] = {"path": os.path.abspath(args.prior), **prior.metadata()}
    write_outputs(args.out, result, prior=prior, mask=mask, inputs=inputs)
    if not con.quiet:
        print(f"{PROG}: {_summary(result)}; outputs in {args.out}")
    return 0


def cmd_apply(args, con: Console) -> int:
    import numpy as np

    from . import io as pio
    from . import warp

    check_out_file(args.out, [args.moving, args.field, args.reference], args.overwrite)
    notes = []
    moving = load_input(args.moving, "moving", notes)
    pio._check_write_ext(args.out, moving.ndim, "--out")
    ref = pio.read_image(args.reference, "reference", notes)
    field, grid = pio.read_field(args.field)
    _check_pair(ref, moving, args.reference, args.moving, "reference", "moving")
    if not grid.same_grid(ref, tol=1e-3):
        raise PriorRegError(
            f"field {args.field} is on a different grid ({_describe(grid)}, spacing {grid.spacing}) than the "
            f"reference {args.reference} ({_describe(ref)}, spacing {ref.spacing}); use the fixed image of the registration"
        )
    for n in notes:
        con.note(n)
    out = warp(moving, field, reference=ref, interpolation=args.interpolation)
    arr = out.array
    if args.interpolation == "linear" and pio.extension(args.out) != ".png":
        arr = arr.astype(np.float32)
    pio.write_image(out.with_array(arr), args.out, "--out")
    if not con.quiet:
        print(f"{PROG}: wrote {args.out} ({_describe(out)}, {args.interpolation} interpolation)")
    return 0


def cmd_demo(args, con: Console) -> int:
    from . import demo

    if args.device.startswith("cuda"):
        _check_device(args.device)
    path = demo.run(args.out, device=args.device, overwrite=args.overwrite, console=con)
    print(f"{PROG}: demo report: {os.path.abspath(path)}")
    return 0


def cmd_cohort(args, con: Console) -> int:
    from .cohort import cmd_cohort as run_cohort

    return run_cohort(args, con)


COMMANDS = {"train": cmd_train, "register": cmd_register, "apply": cmd_apply, "cohort": cmd_cohort, "demo": cmd_demo}


def main(argv=None) -> int:
    """Entry point of the ``priorreg`` command; returns the exit status (also used by sys.exit)."""
    con = Console(quiet=True)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        con = Console(quiet=getattr(args, "quiet", False))
        return COMMANDS[args.command](args, con)
    except (PriorRegError, _Error) as e:
        con.end_bar()
        msg = " ".join(str(e).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, RuntimeError, MemoryError) as e:
        con.end_bar()
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {type(e).__name__}: {msg[:300]}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        con.end_bar()
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
