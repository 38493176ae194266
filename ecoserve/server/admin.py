"""Admin endpoints: read the macro-instance layout, scale by hand.

    GET    /ecoserve/layout              macro instances and their engines
    POST   /ecoserve/engines             launch one engine ({"macro": i}) or attach one ({"url": ...})
    DELETE /ecoserve/engines/{id}        drain an engine, then stop it (ours) or let it go (attached)
    POST   /ecoserve/macro/split         {"macro": i}: split a macro instance in two halves
    POST   /ecoserve/macro/merge         {"into": i, "other": j}: merge two macro instances

They sit behind the API key like every ``/ecoserve`` route. Launching and
draining take as long as they take (a model load, the longest request): the
reply comes when the engine serves, or is gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ecoserve.live import Coordinator, RequestError


class AddEngine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    macro: int | None = Field(None, ge=0, description="macro instance index (default: where the policy adds)")
    url: str | None = Field(None, description="attach this running engine instead of launching one")


class SplitMacro(BaseModel):
    model_config = ConfigDict(extra="forbid")
    macro: int = Field(..., ge=0)


class MergeMacros(BaseModel):
    model_config = ConfigDict(extra="forbid")
    into: int = Field(..., ge=0)
    other: int = Field(..., ge=0)


def _layout(coord: Coordinator) -> dict[str, Any]:
    st = coord.status()
    return {"macro_instances": st["layout"], "launching": st["launching"], "autoscale": st["autoscale"]}


def admin_router(coord: Coordinator, auth: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/ecoserve", dependencies=[Depends(auth)], tags=["admin"])

    @router.get("/layout")
    async def layout() -> JSONResponse:
        """Macro instances in routing order, engines launching, the autoscaler's settings."""
        return JSONResponse(_layout(coord))

    @router.post("/engines", status_code=201)
    async def add_engine(body: AddEngine) -> JSONResponse:
        """Launch one more engine (or attach a running one) and add it to the routing."""
        try:
            if body.url is not None:
                eid = await coord.attach_engine(body.url, macro=body.macro)
            else:
                eid = await coord.add_engine(body.macro)
        except (ValueError, RuntimeError) as e:
            raise RequestError(409, str(e), "ConflictError") from None
        return JSONResponse({"id": eid, **_layout(coord)}, status_code=201)

    @router.delete("/engines/{engine_id}")
    async def remove_engine(engine_id: str) -> JSONResponse:
        """Drain an engine (nothing new routed to it, what it holds finishes), then stop it."""
        try:
            await coord.remove_engine(engine_id)
        except KeyError:
            raise RequestError(404, f"no engine {engine_id!r}", "NotFoundError", "engine_id") from None
        except ValueError as e:
            raise RequestError(409, str(e), "ConflictError") from None
        return JSONResponse({"removed": engine_id, **_layout(coord)})

    @router.post("/macro/split")
    async def split(body: SplitMacro) -> JSONResponse:
        """Split a macro instance in two halves (moves engine handles only)."""
        try:
            coord.split_macro(body.macro)
        except IndexError as e:
            raise RequestError(404, str(e), "NotFoundError", "macro") from None
        except ValueError as e:
            raise RequestError(409, str(e), "ConflictError") from None
        return JSONResponse(_layout(coord))

    @router.post("/macro/merge")
    async def merge(body: MergeMacros) -> JSONResponse:
        """Merge macro instance ``other`` into ``into`` (engines and pending requests)."""
        try:
            coord.merge_macros(body.into, body.other)
        except IndexError as e:
            raise RequestError(404, str(e), "NotFoundError") from None
        except ValueError as e:
            raise RequestError(409, str(e), "ConflictError") from None
        return JSONResponse(_layout(coord))

    return router
