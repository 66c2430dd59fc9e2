"""The one exception type priorreg raises for bad input or a failed run."""


class PriorRegError(ValueError):
    """Raised for input priorreg refuses, or a registration that cannot go on.

    The message always names the function and argument concerned, what was
    expected and what was given, so the CLI can print it as one line.
    """


class PriorRegWarning(UserWarning):
    """A registration ran, but its inputs look wrong (e.g. a prior trained with the modalities
    the other way round). The message is also kept in ``RegistrationResult.warnings`` and in
    the report."""
