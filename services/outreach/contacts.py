"""Contact policy endpoints: delivery receipts, inbound replies, the do-not-contact list.

(Filled in by the SMS work; the router is wired in ``app.py``.)
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["contacts"])
