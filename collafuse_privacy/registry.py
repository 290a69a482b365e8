"""Name -> class registries, one per extension point (STYLE.md: registries that reject
unknown and duplicate names, so methods are never chosen by ``if name == ...`` chains)."""

from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

from .errors import UserError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """``register(name)`` decorates a class; ``get(name)`` fails with the known names.

    ``kind``: what is registered, for messages ("membership attack"); ``base``: classes
    must subclass it (optional). ``classes`` is the name -> class mapping, in
    registration order.
    """

    def __init__(self, kind: str, base: Optional[type] = None):
        self.kind, self.base = kind, base
        self.classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in self.classes:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self.classes[name].__qualname__})")
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
