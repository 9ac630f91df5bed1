"""Losses by name, so that a configuration can pick one (``build_loss("quadlinear_ap", rho=0.1)``)."""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}

L = TypeVar("L", bound=type[nn.Module])


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator: makes the loss constructible as ``build_loss(name, **kwargs)``."""

    def add(cls: L) -> L:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss name {name!r} is already registered by {LOSSES[name].__name__}")
        LOSSES[name] = cls
        return cls

    return add


def loss_names() -> list[str]:
    return sorted(LOSSES)


def build_loss(name: str, **kwargs) -> nn.Module:
    """The loss registered as ``name``, constructed with ``kwargs`` (its paper defaults otherwise)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(loss_names())}")
    return LOSSES[name](**kwargs)
