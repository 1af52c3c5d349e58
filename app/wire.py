"""The casing of the public API's JSON: one base for every body it answers with.

Markets, admin, health and error bodies are camelCase (`statusCode`, `processedAt`), as
registration has been from the start. The webhook endpoints keep Entity Permissions
Core's snake_case, in what EPC sends and in the receipts EPC reads back, so they do not
use this base.
"""

from __future__ import annotations

import msgspec


class WireStruct(msgspec.Struct, rename="camel", frozen=True, kw_only=True):
    """Base of every camelCase body. Its subclasses that are requests also set
    `forbid_unknown_fields=True`, so that a misspelt field is refused, not ignored."""
