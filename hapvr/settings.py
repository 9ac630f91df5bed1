"""Settings that carry their own rules: a dataclass field made with :func:`setting` holds its help
text, its :class:`Bound` (numbers) or its choices as metadata.

The command line builds its options from them (:func:`hapvr.cli.add_settings`) and a config
built in Python is checked against the same rules (:func:`check_settings`), so a rule is written
once. Choices come from the registries they name (backbones, teachers, heads, losses).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hapvr.errors import InputError


@dataclass(frozen=True)
class Bound:
    """The numbers a setting accepts: an integer or a finite float in ``[low, high]`` (either end
    open, or absent)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def parse(self, text: str):
        """The value of ``text``; ValueError with the reason (argparse shows it)."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if self.integer else 'a number'}, got {text!r}") from None
        problem = self.problem(value, text)
        if problem:
            raise ValueError(problem)
        return value

    def problem(self, value, text: str | None = None) -> str | None:
        """Why ``value`` is refused, or None."""
        text = str(value) if text is None else text
        if self.integer and (isinstance(value, bool) or not isinstance(value, int)):
            return f"expected an integer, got {text!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number, got {text!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}, got {text}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}, got {text}"
        return None

    @property
    def name(self) -> str:
        """How argparse names the type in its messages."""
        if self.integer:
            return f"int>={self.low}" if self.low is not None else "int"
        return "float>0" if (self.low == 0 and self.low_open and self.high is None) else "float"


def at_least(low: int) -> Bound:
    return Bound(low=low, integer=True)


POSITIVE = Bound(low=0, low_open=True)
NONNEGATIVE = Bound(low=0)
FINITE = Bound()


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Bound:
    return Bound(low, high, low_open, high_open)


def setting(default=dataclasses.MISSING, *, help: str, bound: Bound | None = None, choices: tuple | None = None,
            default_factory=dataclasses.MISSING):
    """A dataclass field with its help text and its rule (a :class:`Bound` or ``choices``)."""
    metadata = {"help": help, "bound": bound, "choices": None if choices is None else tuple(choices)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_settings(obj) -> None:
    """Checks every field of the dataclass ``obj`` made with :func:`setting` against its rule;
    :class:`~hapvr.errors.InputError` naming the field otherwise (None always passes: a value
    decided at run time)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        bound, choices = f.metadata.get("bound"), f.metadata.get("choices")
        if bound is not None:
            problem = bound.problem(value)
            if problem:
                raise InputError(f"{problem}", f.name)
        if choices is not None and value not in choices:
            raise InputError(f"must be one of {', '.join(map(str, choices))}, got {value!r}", f.name)
