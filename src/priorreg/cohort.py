"""``priorreg cohort``: register many pairs listed in a CSV manifest as one command on Dask.

The manifest has the columns ``fixed,moving`` (paths; relative paths are taken from the
manifest's folder) and optionally ``id`` (the name of the pair's output folder, default
the row number 0001, 0002, ...), ``mask`` (a fixed-space mask) and ``out`` (the pair's
output folder instead of DIR/ID; a relative path is taken from DIR). Blank rows are
skipped; other columns are ignored (with a note).

Everything that can be checked without registering is checked before anything is
submitted (the manifest, every file, ids, output folders and that they can be written,
overwrites, the preset and engine options, the prior); all bad rows are reported in one error. Then each pair is one
task on a dask.distributed cluster (an existing scheduler, ``--scheduler``, or a
LocalCluster): it reads its images, registers, writes the same files as
``priorreg register`` into its folder (as a whole, through :mod:`priorreg.workflow`) and
returns a small dict. A pair that
fails is recorded with its one-line error; the others go on. DIR/cohort.csv and
DIR/cohort.json summarise the run, each pair's notes (warnings) included; ``--resume`` skips complete pairs
and keeps the figures and notes recorded when they ran. Exit status: 0 when every pair is registered (or was
complete already, ``--resume``), 1 when some pair failed, 2 for an error before the run.

dask is an optional dependency (``pip install "dask[distributed]"``); this module imports
it only when the command runs.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

from . import workflow as wf
from .errors import PriorRegError

INSTALL_HINT = 'python3 -m pip install "dask[distributed]"'
COLUMNS = ("fixed", "moving", "id", "mask", "out")
REQUIRED = ("fixed", "moving")
SUMMARY_NAMES = ("cohort.csv", "cohort.json")
SUMMARY_FIELDS = ("id", "status", "preset", "seconds", "final_energy", "percent_folding", "error", "fixed", "moving", "mask", "out", "line",
                  "notes")  # notes last, joined by " | ": a pair's warnings were only in its own report.json
EXIT_PAIRS_FAILED = 1


@dataclass
class Pair:
    """One validated manifest row (absolute paths)."""

    line: int
    id: str
    fixed: str
    moving: str
    mask: str | None
    out: str
    skip: bool = False  # complete from an earlier run (--resume)
    prior: str | None = None  # the cohort's --prior (absolute), which --resume compares as it does the images
    initial_transform: str | None = None  # the cohort's --initial-transform (absolute), compared the same way

    def spec(self) -> dict:
        return {"line": self.line, "id": self.id, "fixed": self.fixed, "moving": self.moving, "mask": self.mask, "out": self.out}


# --------------------------------------------------------------------------- command line


def add_parser(sub):
    """Add the ``cohort`` subcommand to the ``priorreg`` subparsers; returns its parser (the caller adds
    the engine flags and --preset)."""
    c = sub.add_parser(
        "cohort",
        help="register many pairs from a CSV manifest on Dask",
        description="Register every (FIXED, MOVING) pair of a CSV manifest on a dask.distributed cluster. "
        "MANIFEST columns: fixed,moving (paths, relative to the manifest's folder) and optional id, mask, out. "
        "Each pair writes the files of 'priorreg register' into DIR/ID (or its out column); DIR/cohort.csv and "
        "DIR/cohort.json summarise the run. Exit status 1 if some pair failed. Needs dask: " + INSTALL_HINT,
    )
    c.add_argument("manifest", metavar="MANIFEST", help="CSV file with the columns fixed,moving[,id,mask,out]")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory: one folder per pair, plus cohort.csv/cohort.json")
    c.add_argument("--prior", metavar="PRIOR", help="learned prior (from 'priorreg train'); needed for alpha < 1")
    c.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running dask.distributed scheduler (e.g. tcp://host:8786); default: a local cluster")
    c.add_argument("--workers", type=int, metavar="N", help="local cluster: worker processes (default: CPU cores / threads per worker)")
    c.add_argument("--threads-per-worker", type=int, metavar="T", help="local cluster: pairs run at once per worker (default: 1)")
    c.add_argument("--no-processes", action="store_true",
                   help="local cluster: run the workers as threads of this process (small cohorts, tests)")
    c.add_argument("--torch-threads", type=int, metavar="K",
                   help="torch threads per pair (default: local cluster CPU cores / (workers x threads per worker); "
                   "with --scheduler: the worker's default)")
    c.add_argument("--resume", action="store_true", help="skip pairs whose output folder holds all outputs of the same inputs already (their recorded figures are kept)")
    c.add_argument("--overwrite", action="store_true", help="write into existing non-empty output folders")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return c


def import_distributed():
    """The dask.distributed module, or a one-line error with the pip command."""
    try:
        import distributed  # noqa: F401
        from dask import distributed as dd
    except ImportError:
        raise PriorRegError(f"'priorreg cohort' needs dask.distributed, which is not installed; install it with: {INSTALL_HINT}") from None
    return dd


# --------------------------------------------------------------------------- manifest


def _cell(row: dict, name: str) -> str:
    v = row.get(name)
    return "" if v is None else str(v).strip()


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise PriorRegError(f"manifest: no such file: {path}")
    if os.path.isdir(path):
        raise PriorRegError(f"manifest: {path} is a directory; give a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise PriorRegError(f"manifest: cannot read {path} as UTF-8 text; give a CSV file") from None
    except OSError as e:
        raise PriorRegError(f"manifest: cannot read {path} ({e.strerror or e})") from None
    if "\x00" in text:
        raise PriorRegError(f"manifest: {path} is not a text file; give a CSV file")
    return text


def _header(reader, path: str) -> list:
    """The column names (lower case) of the first non-blank line."""
    header = next(reader, None)
    while header is not None and not any(h.strip() for h in header):
        header = next(reader, None)
    if header is None:
        raise PriorRegError(f"manifest: {path} is empty; it needs a header line with at least the columns fixed,moving")
    names = [h.strip().lower() for h in header]
    dup = sorted({n for n in names if n and names.count(n) > 1})
    if dup:
        raise PriorRegError(f"manifest: {path} has the column(s) {', '.join(dup)} more than once")
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        hint = " (the manifest must be comma-separated)" if len(header) == 1 and any(s in header[0] for s in ";\t") else ""
        raise PriorRegError(
            f"manifest: {path} has no column(s) {', '.join(missing)}{hint}; its header is "
            f"{','.join(h.strip() for h in header)!r} and needs fixed,moving (optional: id, mask, out)"
        )
    return names


def _data_rows(reader, names: list) -> list:
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        row = {n: (cells[k] if k < len(cells) else None) for k, n in enumerate(names) if n}
        if len(cells) > len(names):
            row[None] = (len(cells), len(names))
        rows.append((reader.line_num, row))
    return rows


def read_manifest(path) -> tuple[list, list]:
    """``(rows, ignored_columns)``: rows are ``(line number, {column: text})`` of the non-blank data rows."""
    path = os.fspath(path)
    reader = csv.reader(_io.StringIO(_read_text(path), newline=""))
    try:
        names = _header(reader, path)
        rows = _data_rows(reader, names)
    except csv.Error as e:
        raise PriorRegError(f"manifest: {path} is not a valid CSV file (line {reader.line_num}: {e})") from None
    if not rows:
        raise PriorRegError(f"manifest: {path} lists no pairs (only a header)")
    return rows, [n for n in names if n and n not in COLUMNS]


# --------------------------------------------------------------------------- validation (before anything runs)

_BAD_ID = re.compile(r"[/\\\x00-\x1f]")


def _id_problem(pid: str) -> str | None:
    if _BAD_ID.search(pid) or pid.startswith(".") or pid in SUMMARY_NAMES:
        return f"id {pid!r} cannot be a folder name (no slashes, control characters or leading '.', not cohort.csv or cohort.json)"
    return None


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _abs(path: str, base: str) -> str:
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def outputs_complete(folder: str) -> bool:
    """Whether ``folder`` holds every file ``priorreg register`` wrote there: the five always written, and
    those its report.json lists (linear.tfm when the linear stage ran)."""
    import json

    if not all(os.path.isfile(os.path.join(folder, n)) for n in wf.OUTPUT_NAMES):
        return False
    try:
        with open(os.path.join(folder, "report.json")) as fh:
            written = json.load(fh).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return False
    return all(os.path.isfile(os.path.join(folder, os.path.basename(n))) for n in written)


def same_inputs(pr: Pair) -> bool:
    """Whether the pair's report.json names the fixed, moving and mask files its manifest row names now, and
    the cohort's prior and initial transform, at the size and modification time they had (a row corrected after a run, a file
    re-exported at the same path, or another or retrained prior is registered again by --resume, not
    skipped with the old pair's outputs)."""
    import json

    try:
        with open(os.path.join(pr.out, "report.json"), encoding="utf-8") as fh:
            rec = json.load(fh).get("inputs", {})
        was = [rec.get(k) or None for k in ("fixed", "moving", "mask", "prior", "initial_transform")]
        now = [None if p is None else wf.file_stamp(p) for p in (pr.fixed, pr.moving, pr.mask, pr.prior,
                                                                  pr.initial_transform)]
    except (OSError, ValueError, AttributeError):
        return False
    # A record from before the stamps (no "bytes") is compared by path alone, so an upgrade does not redo a cohort.
    # Not seen: new content of the same size with its old modification time restored (cp -p, rsync -t).
    keys = ("bytes", "modified_ns")
    return all((a is None and b is None) or (a is not None and b is not None and wf.same_path(a.get("path"), b["path"])
                                             and all(a.get(k, b[k]) == b[k] for k in keys)) for a, b in zip(was, now))


def written_since(pr: Pair, started: float) -> bool:
    """Whether this run wrote the pair's outputs: complete, for the row's files, every one written after
    ``started`` (a wall-clock time; not a folder an earlier run left complete)."""
    try:
        oldest = min(os.path.getmtime(os.path.join(pr.out, n)) for n in wf.OUTPUT_NAMES)
    except OSError:
        return False
    return oldest >= started and outputs_complete(pr.out) and same_inputs(pr)


def _only_ours(folder: str) -> bool:
    """Whether ``folder`` holds nothing but priorreg outputs (and temporary files of an interrupted write)."""
    return all(n in wf.OUTPUT_NAMES or n == wf.LINEAR_NAME or n.startswith(wf.TEMP_PREFIX) for n in os.listdir(folder))


def _dimension_problems(paths: dict, prior_dim: int | None) -> list:
    """A 2D image beside a 3D one (or a prior of the other dimension), from the files' headers: found before
    anything runs, not by the pair's task hours later. A folder (DICOM) is left to the task."""
    from .io import image_dimension

    dims = {role: image_dimension(p) for role, p in paths.items() if p and not os.path.isdir(p)}
    f, m = dims.get("fixed"), dims.get("moving")
    if f and m and f != m:
        return [f"fixed is {f}D and moving is {m}D (both must be 2D or both 3D)"]
    if prior_dim and (f or m) and (f or m) != prior_dim:
        return [f"the images are {f or m}D and the prior {prior_dim}D"]
    return []


def _parse_row(k: int, row: dict, base: str, out_dir: str, width: int, prior_dim: int | None = None) -> tuple:
    """``(Pair, problems)`` of the k-th data row."""
    from .io import input_problem

    bad = []
    if None in row:
        bad.append(f"{row[None][0]} fields but the header has {row[None][1]}")
    pid = (_cell(row, "id") if "id" in row else "") or f"{k:0{width}d}"  # an empty id: the row number, as without the column
    bad += [p for p in [_id_problem(pid)] if p]
    paths = {}
    for role in ("fixed", "moving", "mask"):
        v = _cell(row, role)
        paths[role] = _abs(v, base) if v else None
        if not v and role != "mask":
            bad.append(f"{role}: empty")
        elif v:
            bad += [p for p in [input_problem(paths[role], role)] if p]
    if not bad:
        bad += _dimension_problems(paths, prior_dim)
    o = _cell(row, "out")
    folder = _abs(o, out_dir) if o else os.path.join(out_dir, pid)
    try:
        wf.check_name_length(folder, "out")
    except PriorRegError as e:
        bad.append(str(e))
    return Pair(0, pid, paths["fixed"], paths["moving"], paths["mask"], folder), bad


def _check_unique(pairs: list, problems: dict) -> dict:
    """Ids and output folders used once; returns {output folder key: line}."""
    first_id, first_out = {}, {}
    for pr in pairs:
        if pr.id in first_id:
            problems[pr.line].append(f"duplicate id {pr.id!r} (first on line {first_id[pr.id]})")
        first_id.setdefault(pr.id, pr.line)
        k = _key(pr.out)
        if k in first_out:
            problems[pr.line].append(f"output folder {pr.out} is also the output folder of line {first_out[k]}")
        first_out.setdefault(k, pr.line)
    return first_out


def _input_keys(manifest: str, prior_path, pairs: list) -> dict:
    """{path key: what it is} of everything the cohort reads (never written)."""
    inputs = {_key(manifest): "the manifest"}
    if prior_path is not None:
        inputs[_key(prior_path)] = "the prior"
    for pr in pairs:
        for role in ("fixed", "moving", "mask"):
            path = getattr(pr, role)
            if path is not None:
                inputs.setdefault(_key(path), f"{role} of line {pr.line}")
    return inputs


def _nesting_problem(pr: Pair, out_key: str, first_out: dict) -> str | None:
    parent = os.path.dirname(_key(pr.out))
    while parent and parent != os.path.dirname(parent) and parent != out_key:
        if parent in first_out and first_out[parent] != pr.line:
            return f"output folder {pr.out} is inside the output folder of line {first_out[parent]}"
        parent = os.path.dirname(parent)
    return None


def _existing_problem(pr: Pair, overwrite: bool, resume: bool) -> str | None:
    """A taken output folder; marks the pair to skip when --resume finds it complete."""
    if not os.path.exists(pr.out):
        return None
    if not os.path.isdir(pr.out):
        return f"output folder {pr.out} exists and is not a directory"
    if not os.listdir(pr.out):
        return None
    if resume and outputs_complete(pr.out) and same_inputs(pr):
        pr.skip = True
    elif not (overwrite or (resume and _only_ours(pr.out))):
        return f"output folder {pr.out} exists and is not empty; use --overwrite, --resume or another id/out"
    return None


def _writable_problem(folder: str, checked: dict) -> str | None:
    """Whether the pair's folder can be created and written: a temporary file in its nearest existing folder."""
    where = folder
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    if where not in checked:
        try:
            wf.check_writable(where, folder, "output folder")
            checked[where] = None
        except PriorRegError as e:
            checked[where] = str(e)
    return checked[where]


def _output_problems(pr: Pair, inputs: dict, out_key: str, first_out: dict, flags: tuple, checked: dict) -> list:
    k = _key(pr.out)
    bad = [f"output folder {pr.out} is {inputs[k]}"] if k in inputs else []
    if k == out_key:
        bad.append(f"output folder {pr.out} is the cohort --out folder itself (give each pair its own folder)")
    for n in wf.OUTPUT_NAMES:
        f = _key(os.path.join(pr.out, n))
        if f in inputs:
            bad.append(f"its output {os.path.join(pr.out, n)} would overwrite {inputs[f]} (inputs are never written)")
    more = [_nesting_problem(pr, out_key, first_out), _existing_problem(pr, *flags)]
    bad += [p for p in more if p]
    if not pr.skip:
        bad += [p for p in [_writable_problem(pr.out, checked)] if p]
    return bad


def _parse_rows(rows: list, base: str, out_dir: str, prior_dim: int | None) -> tuple:
    width = max(4, len(str(len(rows))))
    pairs, problems = [], {}
    for k, (line, row) in enumerate(rows, 1):
        pr, problems[line] = _parse_row(k, row, base, out_dir, width, prior_dim)
        pr.line = line
        pairs.append(pr)
    return pairs, problems


def validate_manifest(manifest, out_dir, *, prior_path=None, overwrite=False, resume=False, notes=None,
                      prior_dim: int | None = None, initial_transform=None) -> list:
    """Check the manifest and the outputs; returns the pairs or raises one error listing every bad row."""
    manifest = os.path.abspath(os.fspath(manifest))
    out_dir = os.path.abspath(os.fspath(out_dir))
    rows, ignored = read_manifest(manifest)
    if ignored and notes is not None:
        notes.append(f"manifest: ignoring the column(s) {', '.join(ignored)}")
    pairs, problems = _parse_rows(rows, os.path.dirname(manifest), out_dir, prior_dim)
    for pr in pairs:
        pr.prior = None if prior_path is None else os.path.abspath(os.fspath(prior_path))
        pr.initial_transform = None if initial_transform is None else os.path.abspath(os.fspath(initial_transform))
    first_out = _check_unique(pairs, problems)
    inputs = _input_keys(manifest, prior_path, pairs)
    checked = {}
    for pr in pairs:
        problems[pr.line] += _output_problems(pr, inputs, _key(out_dir), first_out, (overwrite, resume), checked)
    for n in SUMMARY_NAMES:
        if _key(os.path.join(out_dir, n)) in inputs:
            raise PriorRegError(f"--out {out_dir}: writing {os.path.join(out_dir, n)} would overwrite "
                                f"{inputs[_key(os.path.join(out_dir, n))]}; choose another --out")
    bad_rows = [(line, ps) for line, ps in sorted(problems.items()) if ps]
    if bad_rows:
        listing = " | ".join(f"line {line}: {'; '.join(ps)}" for line, ps in bad_rows)
        raise PriorRegError(f"manifest {manifest} has {len(bad_rows)} bad row(s) of {len(pairs)}; nothing was run: {listing}")
    return pairs


# --------------------------------------------------------------------------- one pair (runs on a worker)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    if not isinstance(e, PriorRegError):
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg[:400]


# Set on Ctrl-C. Pairs on worker processes are stopped by closing the cluster (their processes end);
# pairs on threads of this process (--no-processes) cannot be killed, so they look here at every
# iteration and before writing, and stop: nothing is written after the summary says "not run".
_STOP = threading.Event()
_RUNNING = threading.Condition()  # guards _running: the pairs running on threads of this process
_running = 0


def _stop_point(*_):
    if _STOP.is_set():
        raise PriorRegError("interrupted (Ctrl-C or SIGTERM) before the pair finished; nothing was written")


def _wait_for_threads(timeout: float = 60.0) -> None:
    """After Ctrl-C: let pairs on this process's threads reach a stop point or finish writing."""
    if _running:
        print(f"{wf.PROG}: waiting for {_running} running pair(s) to stop", file=sys.stderr, flush=True)
    with _RUNNING:
        _RUNNING.wait_for(lambda: _running == 0, timeout)


def _register_and_write(spec: dict, prior, preset, overrides: dict, notes: list):
    global _running
    with _RUNNING:
        _running += 1
    try:
        return _register_and_write_once(spec, prior, preset, overrides, notes)
    finally:
        with _RUNNING:
            _running -= 1
            _RUNNING.notify_all()


def _register_and_write_once(spec: dict, prior, preset, overrides: dict, notes: list):
    from .api import register

    pair = wf.read_pair(spec["fixed"], spec["moving"], spec["mask"], prior, spec["prior"], notes,
                        overrides.get("initial_transform"))
    preset, why = wf.chosen_preset(preset, pair.fixed, pair.moving, notes)  # a PET or SPECT file: functional
    # warn=False (pairs may run in threads): result.warnings go to the pair's notes and report.json
    result = register(pair.fixed, pair.moving, prior=prior, preset=preset, mask=pair.mask, warn=False,
                      callback=_stop_point, **overrides)
    result.preset_note = why  # as `priorreg register` records it: a note, not a warning
    _stop_point()
    wf.speak_warnings(result)
    notes.extend(f"warning: {w}" for w in result.warnings)
    notes.extend(wf.linear_notes(result.linear, result.options) + wf.working_grid_notes(result))
    # the report's pictures are numpy and Pillow only (no pyplot state): pairs in threads write at once
    wf.write_outputs(spec["out"], result, prior=prior, mask=pair.mask, inputs=pair.inputs, read_notes=pair.read_notes,
                     extra={"cohort": {"id": spec["id"], "manifest_line": spec["line"]}})
    return result


def _set_torch_threads(n: int | None) -> None:
    if n:
        from .runtime import configure_threads

        configure_threads(n)


def register_pair(spec: dict, prior=None, preset: str | None = None, overrides: dict | None = None,
                  torch_threads: int | None = None) -> dict:
    """Dask task: read, register and write one pair; never raises, returns a small dict."""
    t0 = time.perf_counter()
    res = {"id": spec["id"], "status": "failed", "preset": None, "seconds": None, "final_energy": None,
           "percent_folding": None, "error": "", "notes": []}
    try:
        _set_torch_threads(torch_threads)
        result = _register_and_write(spec, prior, preset, overrides or {}, res["notes"])
        res.update(status="ok", preset=result.preset, final_energy=float(result.final_energy),
                   percent_folding=float(result.jacobian_stats["percent_nonpositive"]))
    except Exception as e:  # one failing pair must not stop the cohort
        res["error"] = wf.spoken(_one_line(e))
    res["seconds"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- progress and summary


def _duration(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """Pairs done/failed/remaining, elapsed and ETA on stderr: one updating line on a TTY, else a line every 10 s."""

    def __init__(self, total: int, con, interval: float = 10.0):
        self.total, self.con, self.interval = total, con, interval
        self.stream = con.stream
        self.tty = con.bar
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.done = self.failed = 0
        self._open = False

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        n = self.done + self.failed
        rem = self.total - n
        eta = _duration(el / n * rem) if n else "--"
        return (f"{wf.PROG}: cohort {n}/{self.total}: {self.done} done, {self.failed} failed, {rem} remaining, "
                f"{_duration(el)} elapsed, ETA {eta}")

    def update(self, ok: bool, force: bool = False) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.show(force)

    def show(self, force: bool = False) -> None:
        if self.con.quiet:
            return
        if self.tty:
            self.stream.write("\r" + self.line() + " ")
            self.stream.flush()
            self._open = True
        elif force or time.perf_counter() - self.last >= self.interval:
            print(self.line(), file=self.stream)
            self.last = time.perf_counter()

    def error(self, msg: str) -> None:
        """A failed pair: one line on stderr, also with --quiet."""
        self.end()
        print(f"{wf.PROG}: {msg}", file=self.stream)

    def end(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


FIGURES = ("seconds", "final_energy", "percent_folding")


def read_previous_run(out_dir: str) -> dict:
    """DIR/cohort.json of the run --resume goes on from; {} when there is none or it cannot be read."""
    import json

    try:
        with open(os.path.join(out_dir, "cohort.json"), encoding="utf-8") as fh:
            before = json.load(fh)
    except (OSError, ValueError):
        return {}
    return before if isinstance(before, dict) else {}


def _check_same_options(out_dir: str, previous_run: dict, options: dict) -> None:
    """--resume goes on with the options of the run it resumes: with others, the pairs it skips would be
    recorded under options they did not run with."""
    import json

    before = previous_run.get("options")  # none recorded: nothing to compare
    now = json.loads(json.dumps(options))  # as cohort.json stores it (tuples as lists)
    if before and before != now:
        names = sorted({k for dim in set(before) | set(now) for k in set(before.get(dim) or {}) | set(now.get(dim) or {})
                        if (before.get(dim) or {}).get(k) != (now.get(dim) or {}).get(k)}) or ["the dimensions"]
        was = sorted({(before.get(dim) or {}).get("levels") for dim in before} - {None})
        hint = (f" (a run before 2026-12-06 took a prior's fewer levels; --levels {was[0]} resumes it as it ran)"
                if names == ["levels"] and len(was) == 1 else "")
        raise PriorRegError(f"--resume with other options than the run in {out_dir} ({', '.join(names)} differ){hint}; "
                            "give the same options, or a new --out")


def _recorded_options(folder: str) -> tuple:
    """(the fixed grid (shape, spacing), the preset its images chose or None, options) a pair's report.json
    records; Nones when it cannot be read."""
    rep = _report(folder)
    try:
        fixed = rep["geometry"]["fixed"]
        grid = (tuple(fixed["shape"]), tuple(fixed["spacing_mm"]))
        return grid, rep.get("preset_note") and rep.get("preset"), rep["options"]
    except (KeyError, TypeError):
        return None, None, None


def _differing_options(pr: Pair, expected) -> list | None:
    """The options a skipped pair's report.json records otherwise than ``expected`` gives now ([] for none, and
    for a pair that runs now); None where its record cannot be read."""
    import json

    if not pr.skip:
        return []
    grid, preset, before = _recorded_options(pr.out)
    want = json.loads(json.dumps(expected(grid, preset))) if before is not None else None
    if want is None:
        return None
    return sorted(k for k in set(before) | set(want) if before.get(k) != want.get(k))


def _check_resumed_options(out_dir: str, previous_run: dict, options: dict, pairs: list, expected) -> None:
    """--resume's two checks: the cohort's options against the run it resumes, and each skipped pair's against
    its report.json. Other cohort options pass where every pair kept from the earlier run is recorded with the
    options it would run with now (a cohort run without --preset whose pairs all ran functional, resumed with
    --preset functional)."""
    differing = [(pr, _differing_options(pr, expected)) for pr in pairs]  # each report.json read once
    try:
        _check_same_options(out_dir, previous_run, options)
    except PriorRegError:
        if not all(names == [] for _, names in differing):
            raise
    # The pairs --resume skips ran with the options given now, as their own report.json says (also when
    # DIR/cohort.json is missing, as after a killed run): otherwise they would be kept beside pairs registered
    # with others, under a summary naming one set. ``expected(grid, preset)``: the options a pair on that fixed
    # grid runs now, under the preset its report names (a PET pair's may differ from the rest).
    for pr, names in differing:
        if names:
            raise PriorRegError(f"--resume with other options than pair {pr.id} was registered with ({', '.join(names)} "
                                f"differ; see {os.path.join(pr.out, 'report.json')}); give the same options, or a new --out")


def previous_records(previous_run: dict) -> dict:
    """{(id, output folder): row} of the pairs the earlier run (its cohort.json) recorded as registered
    (or skipped)."""
    try:
        rows = previous_run.get("pairs", [])
        return {(r["id"], r["out"]): r for r in rows if r.get("status") in ("ok", "skipped")}
    except (AttributeError, KeyError, TypeError):
        return {}


def _report(folder: str) -> dict:
    """A pair's report.json, or {} where it cannot be read."""
    import json

    try:
        with open(os.path.join(folder, "report.json"), encoding="utf-8") as fh:
            report = json.load(fh)
        return report if isinstance(report, dict) else {}
    except (OSError, ValueError):
        return {}


def _skipped_record(pr: Pair, previous: dict) -> dict:
    """A pair complete already: its figures and notes as recorded when it ran (cohort.json), else its figures
    and warnings from its report.json (a resumed cohort.json had dropped a skipped pair's notes); its preset
    from its report.json where the row has none (rows written before they recorded it)."""
    rec = {"id": pr.id, "status": "skipped", "preset": None, "seconds": None, "final_energy": None, "percent_folding": None,
           "error": ""}
    before = previous.get((pr.id, pr.out))
    if before is not None and before.get("seconds") is not None:
        rec.update({k: before.get(k) for k in FIGURES + ("preset",)})
        rec["notes"] = list(before.get("notes") or [])
        rec["preset"] = rec["preset"] or _report(pr.out).get("preset")
        return rec
    report = _report(pr.out)
    summary = report.get("summary") if isinstance(report.get("summary"), dict) else {}
    rec.update({k: summary.get(k) for k in FIGURES}, preset=report.get("preset"))
    if report:
        rec["notes"] = [f"warning: {w}" for w in report.get("warnings") or []]
    return rec


def _summary_row(pr: Pair, records: dict) -> dict:
    r = records.get(pr.id) or {"status": "not run", "error": "interrupted before it finished"}
    return {"id": pr.id, "status": r["status"], "preset": r.get("preset"), **{k: r.get(k) for k in FIGURES},
            "error": r.get("error", ""),
            "fixed": pr.fixed, "moving": pr.moving, "mask": pr.mask or "", "out": pr.out, "line": pr.line,
            **({"notes": r["notes"]} if r.get("notes") else {})}


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return " | ".join(v) if isinstance(v, list) else v


def _csv_text(rows: list) -> str:
    buf = _io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_cell(r.get(k)) for k in SUMMARY_FIELDS})
    return buf.getvalue()


def write_summary(out_dir: str, pairs: list, records: dict, meta: dict) -> dict:
    """Write DIR/cohort.csv and DIR/cohort.json atomically (manifest order); returns the counts."""
    from . import io as pio
    from . import report as rep

    rows = [_summary_row(pr, records) for pr in pairs]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "skipped", "not run")}
    counts["total"] = len(rows)
    pio.write_bytes(os.path.join(out_dir, "cohort.csv"), _csv_text(rows).encode("utf-8"))
    rep.write_json(os.path.join(out_dir, "cohort.json"), {
        "priorreg_cohort": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "counts": counts,
        "versions": rep.package_versions(),
        "pairs": rows,
    })
    return counts


# --------------------------------------------------------------------------- the run


@dataclass
class Plan:
    """Everything checked before a cohort runs."""

    pairs: list
    records: dict  # id -> record; the skipped pairs' already
    prior: object
    prior_path: str | None
    preset: str | None
    overrides: dict
    out_dir: str
    meta: dict

    @property
    def todo(self) -> list:
        return [p for p in self.pairs if not p.skip]


def _cores() -> int:
    from .runtime import available_cpus

    return available_cpus()


def _connect(args):
    dd = import_distributed()
    try:
        client = dd.Client(args.scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise PriorRegError(f"cannot connect to the Dask scheduler at {args.scheduler}: {_one_line(e)}") from None
    nworkers = len(client.scheduler_info().get("workers", {}))
    return client, None, {"scheduler": args.scheduler, "workers_at_start": nworkers}, args.torch_threads


# Run by each worker process as it starts (dask's preload: the text of a script): Ctrl-C on a terminal
# reaches every process of the group, and each worker printed its own KeyboardInterrupt traceback; this
# process closes the cluster on Ctrl-C, which ends them. Workers the nanny restarts run it too.
WORKER_IGNORES_CTRL_C = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"


def _start_client(args, n_run: int):
    """``(client, cluster or None, description dict, torch threads per pair)``."""
    if args.scheduler:
        return _connect(args)
    dd = import_distributed()
    tpw = args.threads_per_worker or 1
    workers = max(1, min(args.workers or max(1, _cores() // tpw), n_run))
    torch_threads = args.torch_threads or max(1, _cores() // (workers * tpw))
    # the dashboard on any free port: another cluster (or a second cohort) may hold Dask's 8787; dask's
    # own log lines stay off the terminal, errors too: each pair's failure is reported from its task, and
    # on Ctrl-C a worker whose heartbeat met the closing scheduler logged a 30-line traceback (a race CI
    # hit); its lock files go to a folder of ours, removed with the cluster (dask leaves /tmp/dask-scratch-space)
    kw = dict(n_workers=workers, threads_per_worker=tpw, processes=not args.no_processes, dashboard_address=":0",
              silence_logs=logging.CRITICAL, local_directory=tempfile.mkdtemp(prefix="priorreg-dask-"))
    if not args.no_processes:  # (threads of this process must not: signals belong to its main thread)
        kw["preload"] = [WORKER_IGNORES_CTRL_C]
    from .runtime import set_wait_policy

    set_wait_policy()  # inherited by the worker processes: OpenMP threads sleep instead of spinning
    try:
        import dask

        with dask.config.set({"temporary-directory": kw["local_directory"]}):
            cluster = dd.LocalCluster(**kw)
    except (OSError, TimeoutError, RuntimeError) as e:
        shutil.rmtree(kw["local_directory"], ignore_errors=True)
        raise PriorRegError(f"cannot start a local Dask cluster ({workers} worker(s)): {_one_line(e)}") from None
    cluster.priorreg_scratch = kw["local_directory"]
    desc = {"scheduler": "local", "workers": workers, "threads_per_worker": tpw, "processes": not args.no_processes}
    return dd.Client(cluster), cluster, desc, torch_threads


def _check_cluster_args(args) -> None:
    for name in ("workers", "threads_per_worker", "torch_threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise PriorRegError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.scheduler and (args.workers or args.threads_per_worker or args.no_processes):
        raise PriorRegError("--workers, --threads-per-worker and --no-processes set up a local cluster; "
                            "they do not apply with --scheduler (size the cluster when starting its workers)")


def _cohort_options(preset, overrides: dict, prior, prior_path, notes: list) -> tuple:
    """``(overrides, {"2D": options, "3D": options})``: a prior fixes the dimension (and maybe bins, levels)."""
    resolved = {}
    for ndim in (prior.dim,) if prior is not None else (2, 3):
        ov, opts = wf.resolve_options(ndim, preset, overrides, prior, prior_path, notes)
        resolved[f"{ndim}D"] = opts.as_dict()
    return ov, resolved


def _pair_options(preset, grid: tuple, chosen, context: tuple) -> dict | None:
    """The options a pair on the fixed grid ``grid`` (shape, spacing) runs with now, as register() resolves
    them: the cohort's preset, or with no --preset the one its images chose (``chosen``; a PET or SPECT file:
    functional, :func:`priorreg.checks.preset_for`), with fewer levels where the image is too small."""
    overrides, prior, prior_path = context
    shape, spacing = grid
    try:
        return wf.resolve_options(len(shape), chosen if preset is None and chosen else preset, overrides, prior,
                                  prior_path, [], shape=shape, spacing=spacing)[1].as_dict()
    except PriorRegError:  # a preset this version does not know, or a prior of another dimension
        return None


def _plan(args, con, overrides: dict) -> Plan:
    """Check the options, the prior, the manifest and every output before anything runs."""
    wf.check_options(args.preset, overrides, args.prior is not None)
    wf.check_device(overrides.get("device", "cpu"))
    notes = []
    prior_path = os.path.abspath(args.prior) if args.prior else None
    prior = wf.load_prior(prior_path)
    overrides, options = _cohort_options(args.preset, overrides, prior, args.prior, notes)
    wf.check_out_dir(args.out, [args.manifest], args.overwrite or args.resume,  # the cohort's own folder, as given
                     taken="use --resume to continue a cohort, --overwrite or another --out")
    out_dir = os.path.abspath(args.out)
    pairs = validate_manifest(args.manifest, out_dir, prior_path=prior_path, overwrite=args.overwrite, resume=args.resume,
                              initial_transform=overrides.get("initial_transform"),
                              notes=notes, prior_dim=None if prior is None else prior.dim)
    for n in dict.fromkeys(notes):  # once, not per dimension
        con.note(n)
    previous_run = read_previous_run(out_dir) if args.resume else {}
    _check_resumed_options(out_dir, previous_run, options, pairs,
                           lambda grid, chosen: _pair_options(args.preset, grid, chosen, (overrides, prior, prior_path)))
    previous = previous_records(previous_run)
    records = {p.id: _skipped_record(p, previous) for p in pairs if p.skip}
    if records:
        con.note(f"--resume: {len(records)} of {len(pairs)} pair(s) complete already; skipping them")
    meta = {"manifest": os.path.abspath(args.manifest), "out": out_dir, "preset": args.preset or "default",
            "overrides": overrides, "options": options,
            "prior": None if prior is None else {"path": prior_path, **prior.metadata()}, "cluster": None}
    return Plan(pairs, records, prior, prior_path, args.preset, overrides, out_dir, meta)


def run(args, con, overrides: dict) -> int:
    """``priorreg cohort``: check everything, register the pairs, write the summary; returns the exit status."""
    import_distributed()
    _check_cluster_args(args)
    plan = _plan(args, con, overrides)
    t0, started = time.perf_counter(), time.time()
    try:
        _execute(args, con, plan)
    except KeyboardInterrupt:
        # The cluster is closed now: a pair whose worker wrote its folder after Ctrl-C came (or before its
        # result was heard) is complete, and nothing more will be written.
        for pr in plan.todo:
            if pr.id not in plan.records and written_since(pr, started):
                plan.records[pr.id] = {**_skipped_record(pr, {}), "status": "ok"}
        plan.meta.update(seconds=time.perf_counter() - t0, interrupted=True)
        if os.path.isdir(plan.out_dir):  # what finished is kept: --resume goes on from there
            write_summary(plan.out_dir, plan.pairs, plan.records, plan.meta)
        raise
    plan.meta["seconds"] = time.perf_counter() - t0
    counts = write_summary(plan.out_dir, plan.pairs, plan.records, plan.meta)
    return _final_lines(args, con, counts, plan.meta["seconds"])


def _final_lines(args, con, counts: dict, seconds: float) -> int:
    summary_csv = os.path.join(args.out, "cohort.csv")
    if not con.quiet:
        print(f"{wf.PROG}: cohort of {counts['total']} pair(s): {counts['ok']} registered, {counts['failed']} failed, "
              f"{counts['skipped']} skipped (complete already) in {_duration(seconds)}; summary in {summary_csv}")
    if counts["failed"]:
        print(f"{wf.PROG}: error: {counts['failed']} of {counts['total']} pair(s) failed; see {summary_csv}", file=sys.stderr)
        return EXIT_PAIRS_FAILED
    return 0


def _start_note(args, desc: dict, torch_threads, n: int) -> str:
    where = args.scheduler or f"a local cluster of {desc['workers']} worker(s) x {desc['threads_per_worker']} thread(s)"
    return f"registering {n} pair(s) on {where}" + (f", {torch_threads} torch thread(s) per pair" if torch_threads else "")


def _execute(args, con, plan: Plan) -> None:
    """Start the cluster, run the pairs not done yet, close the cluster (also on Ctrl-C)."""
    progress = Progress(len(plan.todo), con)
    client = cluster = prev_threads = None
    try:
        if plan.todo:
            client, cluster, desc, torch_threads = _start_client(args, len(plan.todo))
            plan.meta["cluster"] = {**desc, "torch_threads_per_pair": torch_threads}
            if desc.get("workers_at_start") == 0:
                con.note(f"the scheduler at {args.scheduler} has no workers yet; the pairs wait for workers to join")
            if cluster is not None and args.no_processes:
                import torch

                prev_threads = torch.get_num_threads()  # the workers share this process's torch
        wf.make_out_dir(plan.out_dir)
        if plan.todo:
            con.note(_start_note(args, desc, torch_threads, len(plan.todo)))
            _run(client, plan, torch_threads, progress)
    finally:
        progress.end()
        for closing in (client, cluster):
            if closing is not None:
                closing.close()
        if cluster is not None:
            shutil.rmtree(cluster.priorreg_scratch, ignore_errors=True)
        _set_torch_threads(prev_threads)


def _future_record(f, pr: Pair) -> dict:
    """The record of a finished task; a task that could not run (the worker died) is a failed pair."""
    if f.status == "finished":
        return f.result()
    try:
        exc = f.exception()
        err = _one_line(exc) if exc is not None else f"task {f.status}"
    except Exception as e:  # cancelled futures raise here
        err = f"task {f.status}: {_one_line(e)}"
    return {"id": pr.id, "status": "failed", "seconds": None, "final_energy": None, "percent_folding": None, "error": err}


def _run(client, plan: Plan, torch_threads, progress) -> None:
    from dask.distributed import as_completed

    _STOP.clear()
    prior_f = client.scatter(plan.prior, broadcast=True, hash=False) if plan.prior is not None else None
    token = uuid.uuid4().hex[:8]
    futures = {}
    for pr in plan.todo:
        spec = {**pr.spec(), "prior": plan.prior_path}
        f = client.submit(register_pair, spec, prior_f, plan.preset, plan.overrides, torch_threads,
                          key=f"priorreg-{token}-{pr.id}")
        futures[f] = pr
    try:
        for f in as_completed(futures):
            pr = futures.pop(f)
            rec = _future_record(f, pr)
            f.release()
            plan.records[pr.id] = rec
            if rec["status"] != "ok":
                progress.error(f"pair {pr.id} (line {pr.line}) failed: {rec['error']}")
            progress.update(rec["status"] == "ok", force=not futures)
    except KeyboardInterrupt:
        _STOP.set()
        client.cancel(list(futures))
        _wait_for_threads()
        raise
