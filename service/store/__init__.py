"""The versioned model store. Knows nothing of HTTP."""

from service.store.layout import ModelRef, parse_ref
from service.store.store import ModelStore

__all__ = ["ModelRef", "ModelStore", "parse_ref"]
