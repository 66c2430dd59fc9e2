"""Every benchmark case by name (``CASES``): the base cases of case_tools.py, the extra ones of
cases_more.py and the known-offset ones of cases_linear.py. This module sits above those three (they never
import it) and re-exports case_tools' generators and helpers, so ``cases.real_2d`` and the like keep working.

A case is a dict; case_tools.py's docstring lists its keys and how the ground truth is made.
"""
from __future__ import annotations

from case_tools import *  # noqa: F401,F403  (the generators and helpers: cases.real_2d, cases.corrupt, ...)
from case_tools import _nii2d, _slice, brain_2d, brain_3d, phantom, real_2d  # noqa: F401
from cases_linear import LINEAR_CASES
from cases_more import MORE_CASES as _MORE
from cases_more import DataNotFound  # noqa: F401

BASE_CASES = {
    "mni-axial-t2": lambda: brain_2d("axial", "t2", seed=1),
    "mni-axial-pd": lambda: brain_2d("axial", "pd", seed=2),
    "mni-sagittal-t2": lambda: brain_2d("sagittal", "t2", seed=3),
    "mni-sagittal-pd": lambda: brain_2d("sagittal", "pd", seed=4),
    "brainweb-t1-pd": lambda: real_2d("brainweb", seed=5),
    "ixi-t2-pd": lambda: real_2d("ixi", seed=6),
    "mni3d-2mm-t2": lambda: brain_3d("t2", seed=7),
    "phantom-256-close": lambda: phantom(256, "close"),
    "phantom-256-gap": lambda: phantom(256, "gap"),
    "phantom-512-close": lambda: phantom(512, "close"),
}
# the extra cases (cases_more.py) and the known linear offset + smooth warp and ProstateX cases (cases_linear.py)
MORE_CASES = {**_MORE, **LINEAR_CASES}
CASES = {**BASE_CASES, **MORE_CASES}
QUICK = ["mni-axial-t2", "mni-sagittal-t2", "mni-axial-pd", "brainweb-t1-pd", "ixi-t2-pd", "mni3d-2mm-t2",
         "phantom-256-close"]
