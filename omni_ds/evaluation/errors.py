"""The one error an evaluation reports to its user as a single line (tools/evaluate.py: exit 2)."""


class EvaluationInputError(ValueError):
    """An input folder or file that cannot be used as given; the message names it and why."""
