"""The ``priorreg`` command line: train, register, apply, cohort, demo.

Every engine option of :class:`priorreg.RegistrationOptions` becomes a flag
(``max_iterations`` -> ``--max-iterations``) with the dataclass's docstring; ``--help`` lists
what users tune (options.USER_OPTIONS); the solver internals are accepted too, hidden from
``--help`` and listed in docs/options.md. A flag not
given keeps the value of the ``--preset`` (default "default"). Errors print one line
``priorreg: error: ...`` on stderr and exit with status 2; Ctrl-C exits with 130; no
traceback. The work itself (inputs, output checks, writing) is in :mod:`priorreg.workflow`.

Only the standard library is imported here at start-up; numpy comes with the options when
the parser is built, torch and SimpleITK only when a command needs them.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import warnings

from . import workflow as wf
from .errors import PriorRegError, PriorRegWarning
from .image import check_training_pair
from .workflow import LINEAR_NAME, OUTPUT_NAMES, PROG, Console  # noqa: F401  (part of the command's interface)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
# train uses these fields of RegistrationOptions as fit_prior parameters.
TRAIN_OPTIONS = ("bins", "parzen_sigma", "levels", "normalization")
_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


class _Error(Exception):
    """A usage error raised by the argument parser (reported like PriorRegError)."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # --step-voxel set the hidden --step-voxels without a word: no abbreviations
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message):  # one line, no usage block
        flag = message.split(":")[0].removeprefix("argument ").split("/")[0]
        where = "docs/options.md" if _is_internal(flag) else f"'{self.prog} --help'"  # --help hides the internals
        raise _Error(f"{message} (see {where})")


def _is_internal(flag: str) -> bool:
    """Whether ``flag`` is a solver internal's (accepted, but listed in docs/options.md, not in --help)."""
    from dataclasses import fields

    from .options import USER_OPTIONS, RegistrationOptions

    name = flag.removeprefix("--").replace("-", "_")
    return name in {f.name for f in fields(RegistrationOptions)} and name not in USER_OPTIONS


# --------------------------------------------------------------------------- engine flags


def _option_docs() -> dict:
    """Field descriptions from RegistrationOptions' numpydoc 'Attributes' section."""
    import re

    from .options import RegistrationOptions

    out, name, buf = {}, None, []
    for line in (RegistrationOptions.__doc__ or "").splitlines() + ["    end : "]:
        m = re.match(r"^    (\w+) : (.*)$", line)
        if m:
            if name:
                out[name] = " ".join(buf)
            name, buf = m.group(1), []
        elif name and line.startswith("        "):
            buf.append(line.strip())
    # reference-doc markup reads as noise on a terminal: ``x`` and :mod:`x` are shown as x
    return {k: re.sub(r"(:\w+:)?`+([^`]+)`+", r"\2", v) for k, v in out.items()}


def parse_regions(text: str):
    """K, KxK or KxKxK -> int or tuple of int."""
    parts = text.lower().split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise PriorRegError(f"--regions must be K or KxK or KxKxK with integers K >= 1, got {text!r}")
    vals = [int(p) for p in parts]
    return vals[0] if len(vals) == 1 else tuple(vals)


def _alpha_arg(text: str):
    """--alpha: a number, or auto where the options know it."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] or auto, got {text!r}") from None


def _local_regions_arg(text: str):
    """--local-regions: auto, K, KxK or KxKxK."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return parse_regions(text)
    except PriorRegError:
        raise argparse.ArgumentTypeError(f"must be auto, K, KxK or KxKxK with integers K >= 1, got {text!r}") from None


_SPECIAL = {"alpha": _alpha_arg, "local_regions": _local_regions_arg}  # flags that take more than one type


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


BENDING_RULES = {"none": "mm^2 as given",
                 "spacing": "mm^2 at 1 mm voxels, times (mean voxel size / 1 mm)^2",
                 "field_of_view": "mm^2, times (L / 100 mm)^2 where the fixed image's median extent L is under 100 mm"}


def _default_text(name: str) -> str:
    """What no flag gives: the "default" preset's value (per dimension where they differ)."""
    from .options import PRESETS

    v2, v3 = (getattr(PRESETS["default"][nd], name) for nd in (2, 3))
    text = f"default: {v2!r}" if v2 == v3 else f"default: {v2!r} in 2D, {v3!r} in 3D"
    if name == "alpha":
        text += " without --prior, 'auto' with one"
    if name == "bending":
        text += "; " + "; ".join(f"{nd}D: {BENDING_RULES[PRESETS['default'][nd].bending_scale]}" for nd in (2, 3))
        text += "; a value you give is mm^2 as given"
    return text


# --help's line for each option users tune, in flag spellings (RegistrationOptions' docstring, which
# docs/options.md follows, is the reference: it names the Python arguments and the modules)
FLAG_HELP = {
    "alpha": "weight of mutual information against the prior: 1 = mutual information alone (no prior needed), "
             "< 1 needs --prior, auto = chosen per pyramid level from how well the prior fits the pair (report.json: "
             "prior_weights)",
    "regularization": "smoothness: weight of the field's gradient term (larger = smoother, stiffer field)",
    "bending": "weight of the field's curvature term (mm^2): larger = smoother over longer distances",
    "levels": "pyramid levels, each half the resolution of the next; 1 = full resolution only",
    "linear": "the linear stage before the deformable one, by mutual information, never worse than the start; "
              "none = start from the images' world alignment (or --initial-transform)",
    "initial_transform": "an ITK/ANTs/elastix/Slicer transform file (.tfm, .txt, .mat), fixed to moving: the linear "
                         "stage starts from it (with --linear none it is used as it is)",
    "device": "where to compute: cpu, cuda or cuda:N",
    "max_iterations": "iteration cap per pyramid level",
    "local_weight": "share of regional mutual information (block by block: robust to bias fields) in the "
                    "similarity; 0 = global mutual information only",
    "mind_weight": "weight of MIND-SSC, a local modality-independent similarity; 0 = off (hurts PET/SPECT)",
    "bins": "joint histogram bins per intensity axis",
    "parzen_sigma": "Parzen window width of the joint histogram, in bins",
    "normalization": "intensity normalisation",
    "alpha_schedule": "constant = --alpha at every level; mi-finest = --alpha at the coarser levels, mutual "
                      "information alone at the finest",
    "prior_term": "how the prior enters: kl = KL(p_u || p_L) (the paper), ce = cross-entropy, ckl = conditional KL "
                  "(robust to another scanner's intensity proportions)",
}


# ... and what register and cohort add (train makes the prior, on the levels given)
REGISTER_HELP = {"levels": " (fewer where an image is too small for them)", "bins": " (a --prior sets its own)",
                 "parzen_sigma": " (a --prior sets its own)", "normalization": " (a --prior sets the one it was learned with)"}


def _flag_spec(f, docs: dict, choices: dict, internal: bool = False, register: bool = True) -> dict:
    """argparse keywords of the flag of one RegistrationOptions field (default None: not given)."""
    import argparse

    kind = _SPECIAL.get(f.name) or _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
    text = (FLAG_HELP.get(f.name) or docs.get(f.name, "")) + (REGISTER_HELP.get(f.name, "") if register else "")
    help_ = text.replace("%", "%%") + f" ({_default_text(f.name)})"
    if internal:
        help_ = argparse.SUPPRESS
    kw = dict(type=kind, default=None, dest=f.name, help=help_, metavar=f.name.upper())
    if choices.get(f.name):
        kw["choices"] = choices[f.name]
        kw["metavar"] = "{" + ",".join(choices[f.name]) + "}"
    kw["metavar"] = {"device": "{cpu,cuda,cuda:N}", "local_regions": "{auto,K,KxK,KxKxK}"}.get(f.name, kw["metavar"])
    return kw


def add_engine_options(parser, names=None, preset: bool = True) -> None:
    """Add one flag per RegistrationOptions field; only the flags given override the preset."""
    import dataclasses

    from .options import CHOICES, USER_OPTIONS, RegistrationOptions

    docs, choices = _option_docs(), CHOICES
    title = "defaults: the --preset's, else the default preset's" if preset else "defaults from the default preset"
    internals = "; solver internals (step sizes, tolerances, sampling, term details) are accepted too and listed in docs/options.md"
    group = parser.add_argument_group(f"engine options ({title}{internals if names is None else ''})")
    rank = {n: i for i, n in enumerate(USER_OPTIONS)}  # what users tune, most often first; the internals (hidden) after
    for f in sorted(dataclasses.fields(RegistrationOptions), key=lambda f: rank.get(f.name, len(rank))):
        if names is None or f.name in names:
            group.add_argument(option_flag(f.name), **_flag_spec(f, docs, choices, f.name not in USER_OPTIONS, preset))


def add_preset_option(parser) -> None:
    from .options import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), metavar="{" + ",".join(sorted(PRESETS)) + "}",
                        help="named engine options (docs/options.md): default, mr (MR to MR, the same as default), "
                        "functional (PET/SPECT with CT; chosen with no --preset where a file says PET or SPECT), atlas (a regional prior learned in the images' frame decides), "
                        "paper (the 2005 energy); the engine flags given override it (default: default)")


def engine_overrides(args, names=None) -> dict:
    """The engine options given on the command line (field name -> value)."""
    import dataclasses

    from .options import RegistrationOptions

    fields = [f.name for f in dataclasses.fields(RegistrationOptions) if names is None or f.name in names]
    return {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}


# --------------------------------------------------------------------------- parser


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
    _add_train(sub)
    _add_register(sub)
    _add_apply(sub)
    _add_cohort(sub)
    _add_demo(sub)
    return p


def _add_train(sub) -> None:
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
    add_engine_options(t, TRAIN_OPTIONS, preset=False)


def _add_register(sub) -> None:
    r = sub.add_parser(
        "register",
        help="register MOVING onto FIXED",
        description="Register MOVING onto FIXED (starting from their world alignment). Writes DIR/warped.nii.gz, "
        "field.nii.gz (ITK/ANTs displacement field: world LPS mm, pull-back), jacobian.nii.gz, report.json, "
        "report.html, and linear.tfm when the linear stage ran. Progress on stderr: the linear stage and set-up, then a bar per pyramid level on a terminal, else one line each.",
    )
    r.add_argument("fixed", metavar="FIXED", help="reference image (file or DICOM series directory)")
    r.add_argument("moving", metavar="MOVING", help="image to deform")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    r.add_argument("--prior", metavar="PRIOR", help="learned prior (from 'priorreg train'); needed for alpha < 1")
    r.add_argument("--mask", metavar="MASK", help="fixed-space mask: where the similarity terms sample (plus a 2 mm margin: the "
                   "region's outline is often the edge that aligns it); on another grid it is resampled by world position")
    r.add_argument("--overwrite", action="store_true", help="write into an existing non-empty DIR")
    r.add_argument("--quiet", action="store_true", help="no progress, notes or summary")
    add_preset_option(r)
    add_engine_options(r)


def _add_apply(sub) -> None:
    a = sub.add_parser(
        "apply",
        help="apply a displacement field to an image (label maps too)",
        description="Resample MOVING on the --reference grid through FIELD (a field.nii.gz from 'priorreg register'); "
        "with --inverse, resample an image of the fixed space on the grid of the registration's moving image (given "
        "as --reference) through the field's inverse.",
    )
    a.add_argument("moving", metavar="MOVING", help="image in the moving space (intensities or labels); with "
                   "--inverse, an image in the fixed space")
    a.add_argument("--field", required=True, metavar="FIELD", help="displacement field (field.nii.gz)")
    a.add_argument("--reference", required=True, metavar="REFERENCE", help="the fixed image the field was computed on; "
                   "with --inverse, the moving image of the registration")
    a.add_argument("--inverse", action="store_true", help="go the other way: resample an image of the fixed space "
                   "(labels drawn on the fixed image) onto the moving image's grid, through the field's inverse")
    a.add_argument("--out", required=True, metavar="OUT", help="output image (.nii.gz, .nii, .mha, .nrrd, .png, .tif)")
    a.add_argument("--interpolation", choices=("linear", "nearest"), default="linear",
                   help="'nearest' for label maps (default: linear)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    a.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _add_cohort(sub) -> None:
    from .cohort import add_parser

    c = add_parser(sub)
    add_preset_option(c)
    add_engine_options(c)


def _add_demo(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="run a registration on bundled BrainWeb data and write a report",
        description="Learn a prior on the bundled BrainWeb T1/PD slice pair, deform the PD slice by a known smooth "
        "field, register it back onto T1 with alpha=auto (prior weighed per level; a one-pair prior gets none) and "
        "alpha=0.7 (the prior used anyway), and report the endpoint errors.",
    )
    d.add_argument("--out", default="priorreg-demo", metavar="DIR", help="output directory (default: ./priorreg-demo)")
    d.add_argument("--device", default="cpu", metavar="{cpu,cuda,cuda:N}", help="device (default: cpu)")
    d.add_argument("--overwrite", action="store_true", help="write into an existing non-empty DIR")
    d.add_argument("--quiet", action="store_true", help="print nothing but errors and the two reports' paths")


# --------------------------------------------------------------------------- commands


def _train_inputs(args, notes: list) -> tuple:
    """``(fixed images, moving images, masks or None)`` of ``priorreg train``, checked pair by pair."""
    fixed = [wf.load_input(p, f"fixed[{j}]", notes) for j, p in enumerate(args.fixed)]
    moving = [wf.load_input(p, f"moving[{j}]", notes) for j, p in enumerate(args.moving)]
    for j, (f, m) in enumerate(zip(fixed, moving)):
        wf.check_pair(f, m, args.fixed[j], args.moving[j], f"fixed[{j}]", f"moving[{j}]")
        wf.check_size(f, f"fixed[{j}]", args.fixed[j])
        check_training_pair(f, m, j, fixed[0], "train", f"{args.fixed[j]} and {args.moving[j]}")
    masks = [wf.load_mask(p, f, notes) for p, f in zip(args.mask, fixed)] if args.mask else None
    return fixed, moving, masks


def _say_warnings(said: list, reword=wf.spoken) -> None:
    """Caught warnings: ours one line each (``reword`` names things as the command does), others as Python
    shows them."""
    for w in said:
        if issubclass(w.category, PriorRegWarning):
            print(f"{PROG}: warning: {reword(str(w.message))}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def cmd_train(args, con: Console) -> int:
    """``priorreg train``; errors of the functions it calls are said as the command's own."""
    try:
        return _train(args, con)
    except PriorRegError as e:
        raise PriorRegError(re.sub(r"^(register|fit_prior)\(\):", "train:", str(e))) from None


def _train(args, con: Console) -> int:
    import time

    from .options import RegistrationOptions

    if len(args.fixed) != len(args.moving):
        raise PriorRegError(f"train: got {len(args.fixed)} --fixed and {len(args.moving)} --moving images; give one moving per fixed")
    if args.mask is not None and len(args.mask) != len(args.fixed):
        raise PriorRegError(f"train: got {len(args.mask)} --mask for {len(args.fixed)} pairs; give one mask per pair")
    given = engine_overrides(args, TRAIN_OPTIONS)
    RegistrationOptions(**given)  # bad values before reading images
    wf.check_out_file(args.out, list(args.fixed) + list(args.moving) + list(args.mask or []), args.overwrite)
    notes = []
    fixed, moving, masks = _train_inputs(args, notes)
    from .options import preset_options
    from .pyramid import max_levels

    preset = preset_options("default", fixed[0].ndim)  # what --help says: the binning register will use
    kw = {k: getattr(preset, k) for k in TRAIN_OPTIONS}
    kw.update(given, regions=parse_regions(args.regions))
    smallest = min(fixed, key=lambda f: max_levels(f.shape, f.spacing))  # as register does for an image too small
    kw.update(wf.fewer_levels(preset.replace(**given), smallest.shape, given, notes, smallest.spacing))
    for n in notes:
        con.note(n)
    from .prior import fit_prior  # torch: only once the arguments and the output are known to be good

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", PriorRegWarning)
        prior = fit_prior(fixed, moving, masks=masks, **kw)
    pair = re.compile(r"^fit_prior\(\): training pair (\d+)")
    _say_warnings(said, lambda m: re.sub(r"^fit_prior\(\):", "train:", pair.sub(
        lambda g: f"train: pair {g[1]} ({args.fixed[int(g[1])]} and {args.moving[int(g[1])]})", m)))
    prior.save(args.out)
    if not con.quiet:
        regions = f", regions={'x'.join(map(str, prior.regions))}" if prior.n_regions > 1 else ""
        print(f"{PROG}: prior from {prior.n_pairs} pair(s), {prior.dim}D, bins={prior.bins}, levels={prior.levels}"
              f"{regions} written to {args.out} ({time.perf_counter() - t0:.1f} s)")
    if prior.n_pairs < 2:
        con.note("one training pair: register's alpha auto gives such a prior no weight (nothing shows that it holds "
                 "for other pairs); train on two or more pairs, or register with --alpha to use it")
    return 0


def cmd_register(args, con: Console) -> int:
    overrides = engine_overrides(args)
    wf.check_options(args.preset, overrides, args.prior is not None)  # bad values before reading images
    wf.check_device(overrides.get("device", "cpu"))
    wf.check_out_dir(args.out, [args.fixed, args.moving, args.prior, args.mask], args.overwrite)
    notes = []
    prior = wf.load_prior(args.prior)
    pair = wf.read_pair(args.fixed, args.moving, args.mask, prior, args.prior, notes, overrides.get("initial_transform"))
    fixed, moving, mask = pair.fixed, pair.moving, pair.mask
    preset, why = wf.chosen_preset(args.preset, fixed, moving, notes)  # a PET or SPECT file: functional
    overrides, opts = wf.resolve_options(fixed.ndim, preset, overrides, prior, args.prior, notes,
                                         shape=fixed.shape, spacing=fixed.spacing)
    for n in notes:
        con.note(n)
    from .api import register  # torch: only once the arguments and the outputs are known to be good

    said = set()  # lines printed as soon as known (below the linear stage's line), not again at the end

    def ahead(linear, warnings):
        lines = wf.linear_notes(linear, opts) + [f"warning: {wf.spoken(w)}" for w in warnings]
        said.update(lines)
        return lines

    cb = con.progress(opts.max_iterations, opts.levels, before=wf.ahead_of_levels(opts), spacing=fixed.spacing,
                      ahead=ahead)

    # warn=False: result.warnings are printed below as one line each, not as Python warnings
    result = register(fixed, moving, prior=prior, preset=preset, mask=mask, callback=cb, warn=False, **overrides)
    result.preset_note = why  # report.json says why, as register() does where it chooses
    wf.speak_warnings(result)
    con.end_bar(done=True)
    for n in wf.linear_notes(result.linear, result.options) + wf.working_grid_notes(result):  # as the stages ran
        if n not in said:
            con.note(n)
    for w in result.warnings:
        if f"warning: {w}" not in said:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
    wf.write_outputs(args.out, result, prior=prior, mask=mask, inputs=pair.inputs, read_notes=notes,  # the options' notes too
                     overwrite=args.overwrite)
    if not con.quiet:
        print(f"{PROG}: {wf.summary(result)}; outputs in {args.out}")
    return 0


def cmd_apply(args, con: Console) -> int:
    import numpy as np

    from . import io as pio

    wf.check_out_file(args.out, [args.moving, args.field, args.reference], args.overwrite)
    wf.check_image_format(args.out)
    notes = []
    moving = wf.load_input(args.moving, "image" if args.inverse else "moving", notes, labels=args.interpolation == "nearest")
    wf.check_image_format(args.out, moving.ndim)
    ref = pio.read_image(args.reference, "reference", notes, outputs_on_grid=True)
    field, grid, through_plane = pio.read_field(args.field)
    if args.inverse:
        field = _inverse_of(args, field, grid, through_plane, ref, moving)
    else:
        _check_forward(args, grid, through_plane, ref, moving)
    if args.interpolation == "linear":
        notes += wf.label_map_notes(moving, args.moving)
    for n in notes:
        con.note(n)
    from .resample import warp_with_fov  # torch

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", PriorRegWarning)
        out, fov = warp_with_fov(moving, field, reference=ref, interpolation=args.interpolation)
    _say_warnings(said)
    spoke = any(issubclass(w.category, PriorRegWarning) for w in said)  # warp's own says more where it spoke
    for n in [] if spoke else wf.coverage_notes(ref, fov, "the image" if args.inverse else "the moving image"):
        print(f"{PROG}: warning: {n}", file=sys.stderr)
    arr = out.array
    if args.interpolation == "linear" and pio.extension(args.out) != ".png":
        arr = arr.astype("float32")
    rounded = pio.extension(args.out) == ".png" and not np.array_equal(arr, np.round(arr))
    pio.write_image(out.with_array(arr), args.out, "--out")
    if rounded:
        con.note(f"--out {args.out}: PNG holds whole numbers, so the interpolated values were rounded (write .nii.gz, "
                 ".nrrd or .tif to keep their fractions)")
    if not con.quiet:
        print(f"{PROG}: wrote {args.out} ({wf.describe(out)}, {args.interpolation} interpolation)")
    return 0


def _check_forward(args, grid, through_plane: float, ref, moving) -> None:
    """Refuse a field that was not made on ``ref``'s grid for ``moving``'s plane."""
    offset = wf.check_pair(ref, moving, args.reference, args.moving, "reference", "moving")
    differs = grid.grid_difference(ref)
    if differs:
        raise PriorRegError(f"field {args.field} is on a different grid than the reference {args.reference} ({differs}); "
                            "use the fixed image of the registration")
    if abs(through_plane - offset) > 1e-3:
        raise PriorRegError(f"field {args.field} was made for a moving slice {through_plane:.4g} mm from the reference's "
                            f"plane, but {args.moving} lies {offset:.4g} mm from it; use the moving image of the registration")


def _inverse_of(args, field, grid, through_plane: float, ref, image):
    """The field's inverse on ``ref``'s grid (the registration's moving image), for ``image`` of the fixed space."""
    if abs(wf.check_pair(grid, image, args.field, args.moving, "field", "image")) > 1e-3:
        raise PriorRegError(f"with --inverse, {args.moving} must be an image of the fixed space: it lies off the plane of "
                            f"the field {args.field}")
    offset = wf.check_pair(grid, ref, args.field, args.reference, "field", "reference")
    if abs(through_plane - offset) > 1e-3:
        raise PriorRegError(f"field {args.field} was made for a moving slice {through_plane:.4g} mm from its plane, but the "
                            f"reference {args.reference} lies {offset:.4g} mm from it; with --inverse, give the moving "
                            "image of the registration as --reference")
    from .inverse import invert_field  # torch

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", PriorRegWarning)
        inv = invert_field(field, grid, ref)
    _say_warnings(said)
    return inv.field


def cmd_demo(args, con: Console) -> int:
    from . import demo

    wf.check_device(args.device)
    reports = demo.run(args.out, device=args.device, overwrite=args.overwrite, console=con)
    shown = ", ".join(f"{os.path.abspath(path)} ({run})" for run, path in reports.items())
    print(f"{PROG}: demo reports: {shown}; each gives the endpoint errors of both")
    return 0


def cmd_cohort(args, con: Console) -> int:
    from . import cohort

    return cohort.run(args, con, engine_overrides(args))


COMMANDS = {"train": cmd_train, "register": cmd_register, "apply": cmd_apply, "cohort": cmd_cohort, "demo": cmd_demo}


def _fail(con: Console, msg: str) -> None:
    con.end_bar(stopped=True)
    print(f"{PROG}: error: {msg}", file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a batch scheduler, ``docker stop``), taken as Ctrl-C is: the run stops where it is,
    what it was writing is removed, a cohort writes its summary."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    """Entry point of the ``priorreg`` command; returns the exit status (also used by sys.exit).

    Ctrl-C at any time, the imports of the heavy libraries included, is one line and status 130; SIGTERM
    one line and status 143.
    """
    before = None
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # an embedding program's own handler stays
            before = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals are not this call's to take
        pass
    try:
        return _main(argv)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _main(argv) -> int:
    con = Console(quiet=True)
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # a mistyped flag of a command: its help, not the top level's
            where = f"priorreg {args.command}" if args.command else "priorreg"
            raise _Error(f"unrecognized arguments: {' '.join(extra)} (see '{where} --help')")
        con = Console(quiet=getattr(args, "quiet", False))
        if args.command != "cohort":  # the cohort sets threads per worker
            from .runtime import configure_threads

            configure_threads()
        return COMMANDS[args.command](args, con)
    except (PriorRegError, _Error) as e:
        _fail(con, wf.spoken(" ".join(str(e).split())))
        return EXIT_ERROR
    except OSError as e:  # the file it concerns, where the system names one (a full disk: the output being written)
        where = f": {e.filename}" if e.filename else ""
        _fail(con, f"{e.strerror}{where}" if e.strerror else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        return EXIT_ERROR
    except (RuntimeError, MemoryError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        _fail(con, f"{type(e).__name__}: {msg[:300]}")
        return EXIT_ERROR
    except _Terminated:
        _fail(con, "terminated (SIGTERM)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _fail(con, "interrupted")
        return EXIT_INTERRUPTED


def _observed() -> bool:
    """A profiler, tracer or coverage tool is attached: through sys.setprofile/settrace, or (Python 3.12 on,
    where cProfile and coverage's fast core use it) as a sys.monitoring tool."""
    mon = getattr(sys, "monitoring", None)
    tools = [mon.get_tool(i) for i in range(6)] if mon else []
    return bool(sys.getprofile() or sys.gettrace() or any(tools))


class _BestEffort:
    """A console stream whose failures (closed, a reader that quit, a full disk) are dropped: what the command
    says there is progress and summaries; its outputs and its exit status are the result."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text) if self._stream is not None else len(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            if self._stream is not None:
                self._stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name):  # encoding, fileno, ...
        return getattr(self._stream, name)


def _usable_streams() -> None:
    """A closed standard descriptor becomes /dev/null (a file opened later would take its number, and a library's
    message to stderr would land in an output file); writes to stdout and stderr that fail are dropped."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    sys.stdout, sys.stderr = _BestEffort(sys.stdout), _BestEffort(sys.stderr)


def run() -> None:
    """The ``priorreg`` command (console script, ``python3 -m priorreg``): :func:`main`, then exit.

    Every output is written, renamed into place and closed when :func:`main` returns, so the
    process ends there without tearing the interpreter down: unloading torch and its thread
    pools took 0.25-0.3 s of a 6 s 3D registration on a 2-core machine. The
    cohort command exits normally (its cluster has exit handlers of its own).
    """
    _usable_streams()
    code = main()
    if sys.argv[1:2] == ["cohort"] or _observed():  # a profiler or coverage writes at exit
        sys.exit(code)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
