"""`POST /v1/feedback`: what a user says of an answer, stored beside it (`data.store`).

    {"id": "chatcmpl-…", "rating": 1, "correction": "cardiology", "comment": "right chapter"}

`id` is the response id the server returned (also in the `X-Request-Id` header); `rating` is -1
(bad) or 1 (good), or 1 to 5 stars; `correction` (the right answer or label) and `comment` are
optional, PII-masked before they are stored. Answers 200 `{"id": <feedback id>, "object":
"feedback", "request_id": ...}`; 400 naming the field for a malformed body; 404 for an id the store
does not hold; 404 too when the server runs without `--store`, saying so. Authenticated like every
route but /health.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domaintune.serve.schemas import ApiError, _from_validation

MAX_TEXT = 8192


class FeedbackRequest(BaseModel):
    """The feedback body (unknown fields are refused: a typo must not drop a correction silently)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=64)
    rating: int
    correction: str | None = Field(None, max_length=MAX_TEXT)
    comment: str | None = Field(None, max_length=MAX_TEXT)

    @field_validator("rating")
    @classmethod
    def _rating(cls, value: int) -> int:
        if value not in (-1, 1, 2, 3, 4, 5):
            raise ValueError("must be -1 or 1 (bad / good), or 1 to 5 stars")
        return value


def store_feedback(store: Any, raw: bytes) -> dict[str, Any]:
    """Validate `raw` and store it; the response body.

    Raises:
        ApiError: 400 (malformed, naming the field), 404 (unknown id, or no store).
    """
    from domaintune.data.store import UnknownRequest

    try:
        body = FeedbackRequest.model_validate_json(raw)
    except ValidationError as err:
        raise _from_validation(err) from None
    if store is None:
        raise ApiError(404, "this server keeps no store of its answers: start it with --store to take feedback",
                       kind="not_found_error")
    try:
        feedback_id = store.add_feedback(body.id, body.rating, body.correction, body.comment)
    except UnknownRequest:
        raise ApiError(404, f"id: no stored response has the id {body.id!r}", param="id",
                       kind="not_found_error") from None
    return {"id": feedback_id, "object": "feedback", "request_id": body.id}
