"""The backfill's Redis state: the plan hash and the staging hash (one field per fetched range).

Writes are small Lua scripts so that they are atomic and tied to one plan: a
range is staged only while the plan that asked for it still runs (a late job of
a cancelled or finished backfill writes nothing), and a plan is dropped only by
its own id. Staging the same range twice writes the same bytes.
"""

from __future__ import annotations

from typing import Final

import msgspec
import redis

from shared import lua
from shared.chain.plan import Plan, Span, Staged, decode_staged, encode_staged
from shared.errors import DecodeError
from shared.keys import Keys
from shared.redis_log import as_str, redis_retry

_CREATE_LUA: Final = lua.source("backfill_create")

_STAGE_LUA: Final = lua.source("backfill_stage")

_DROP_LUA: Final = lua.source("backfill_drop")


class BackfillStore:
    """The plan and staged ranges of one network's backfill."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._keys = [keys.backfill_plan, keys.backfill_staged]
        self._create = client.register_script(_CREATE_LUA)
        self._stage = client.register_script(_STAGE_LUA)
        self._drop = client.register_script(_DROP_LUA)

    def create(self, plan: Plan) -> bool:
        """Store ``plan`` unless a plan already runs; False when one does."""
        args = [plan.id, plan.start, plan.end, plan.size]
        return bool(redis_retry(self._create, keys=self._keys, args=args))

    def plan(self) -> Plan | None:
        """The running plan, or None."""
        raw = redis_retry(self.client.hgetall, self.keys.backfill_plan)
        if not raw:
            return None
        fields = {as_str(k): as_str(v) for k, v in raw.items()}
        try:
            return msgspec.convert(fields, Plan, strict=False)
        except msgspec.ValidationError as exc:
            raise DecodeError(
                f"backfill plan {self.keys.backfill_plan} is malformed: {exc}"
            ) from None

    def drop(self, plan_id: str = "") -> bool:
        """Delete the plan ``plan_id`` (any plan when empty) and every staged range."""
        return bool(redis_retry(self._drop, keys=self._keys, args=[plan_id]))

    def stage(self, plan_id: str, staged: Staged) -> bool:
        """Write a fetched range; False (nothing written) when plan ``plan_id`` no longer runs."""
        args = [plan_id, staged.span.name, encode_staged(staged)]
        return bool(redis_retry(self._stage, keys=self._keys, args=args))

    def staged(self, span: Span) -> Staged | None:
        """The staged range ``span``, or None when it is not staged (yet)."""
        raw = redis_retry(self.client.hget, self.keys.backfill_staged, span.name)
        if raw is None:
            return None
        try:
            staged = decode_staged(raw)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"staged range {span.name} is malformed: {exc}") from None
        if staged.span != span:
            raise DecodeError(f"staged range {span.name} holds blocks {staged.span.name}")
        return staged

    def is_staged(self, span: Span) -> bool:
        return bool(redis_retry(self.client.hexists, self.keys.backfill_staged, span.name))

    def staged_count(self) -> int:
        """How many ranges are staged and not appended yet."""
        return int(redis_retry(self.client.hlen, self.keys.backfill_staged))

    def unstage(self, span: Span) -> None:
        """Forget a staged range (after it was appended, or when it became obsolete)."""
        redis_retry(self.client.hdel, self.keys.backfill_staged, span.name)


__all__ = ["BackfillStore"]
