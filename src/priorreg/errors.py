"""The one exception type priorreg raises for bad input or a failed run."""
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
    or ``sitk::ERROR:`` with the lines after it joined (a matrix, a file name), else the message's last line."""
    text = str(e).strip()
    if not text:
        return "unknown error"
    m = re.search(r"(?:ITK ERROR: \S+\(0x[0-9a-fA-F]+\):|sitk::ERROR:)\s*(.*)", text, re.S)
    return " ".join((m.group(1) if m else text.splitlines()[-1]).split())[:limit]
