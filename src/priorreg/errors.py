"""The one exception type priorreg raises for bad input or a failed run, its warning type, and the one-line
reasons for what SimpleITK refuses (its C++ messages, the paths it cannot open)."""
import os
import re


class PriorRegError(ValueError):
    """Raised for input priorreg refuses, or a registration that cannot go on.

    The message always names the function and argument concerned, what was
    expected and what was given, so the CLI can print it as one line.
    """


class PriorRegWarning(UserWarning):
    """A registration ran, but its inputs look wrong (e.g. a prior trained with the modalities
    the other way round). The message is also kept in ``RegistrationResult.warnings`` and in
    the report."""


def itk_reason(e: BaseException, limit: int = 200) -> str:
    """Why SimpleITK refused (its exception ``e``), on one line: the text after ``ITK ERROR: Class(0x...):``
    (Windows: ``Class(000001...)``)
    or ``sitk::ERROR:`` with the lines after it joined (a matrix, a file name), else the message's last line."""
    text = str(e).strip()
    if not text:
        return "unknown error"
    m = re.search(r"(?:ITK ERROR: \S+\((?:0x)?[0-9a-fA-F]+\):|sitk::ERROR:)\s*(.*)", text, re.S)
    return " ".join((m.group(1) if m else text.splitlines()[-1]).split())[:limit]


def name_problem(path, name: str) -> str | None:
    """Why SimpleITK cannot open ``path`` (as it will be given to it): a byte that is not UTF-8 (a Latin-1 name
    from an old share), on which its C++ layer aborts the whole process; None where it can."""
    text = os.fsdecode(path)
    bad = [ch for ch in text if "\udc80" <= ch <= "\udcff"]  # Python's stand-ins for such bytes
    if not bad:
        return None
    return (f"{name}: the path {os.fsencode(text)!r} holds a byte that is not UTF-8 (0x{ord(bad[0]) - 0xDC00:02x}), "
            "which SimpleITK cannot open; rename it (or the folder) in UTF-8")
