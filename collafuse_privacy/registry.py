"""Name -> class registries, one per extension point (STYLE.md: registries that reject
unknown and duplicate names, so methods are never chosen by ``if name == ...`` chains)."""

from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

from .errors import UserError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """``register(name)`` decorates a class; ``get(name)`` fails with the known names.

    ``kind``: what is registered, for messages ("membership attack"); ``base``: classes
    must subclass it (optional); ``names``: the only names it may hold (optional), declared in a
    low module where the config, which may not import the registry, reads them as the allowed
    values of its key (``config/choices.py``). ``classes`` is the name -> class mapping, in
    registration order.
    """

    def __init__(self, kind: str, base: Optional[type] = None, names: Optional[tuple[str, ...]] = None):
        self.kind, self.base, self.declared = kind, base, names
        self.classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in self.classes:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self.classes[name].__qualname__})")
            if self.declared is not None and name not in self.declared:
                raise ValueError(f"{self.kind} {name!r} is not declared (declared: {', '.join(self.declared)})")
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{cls!r} is not a {self.base.__name__}")
            cls.name = name
            self.classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return list(self.classes)

    def get(self, name: str) -> T:
        """The class registered as ``name``; :class:`UserError` listing the known names otherwise."""
        if name not in self.classes:
            raise UserError(f"unknown {self.kind} {name!r} (known: {', '.join(self.classes)})")
        return self.classes[name]
