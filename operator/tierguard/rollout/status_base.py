"""The base of the status models: camelCase aliases like :class:`tierguard.policy.Model`, but
unknown fields are ignored (the API server and kopf may add their own to ``.status``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, camelCase, without unset optional fields: what goes into ``.status``."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
