"""Prefect Variables through the public client's ``request`` (the ``/variables`` routes), async and blocking.

The KV service needs filters and by-name PATCH/DELETE with status codes (404 = missing, 409 = taken),
which Prefect's ``Variable`` class hides; its client's public ``request`` reaches the same routes on the
kept client. Errors come back as :class:`VariablesAPIError` (status, text) or :class:`VariablesUnreachable`.
"""

from __future__ import annotations

from typing import Any

import httpx

from aether_prefect._prefect._client import with_client, with_sync_client

PAGE = 200  # Prefect returns at most 200 variables per filter call


class VariablesAPIError(Exception):
    """The API answered an unexpected status."""

    def __init__(self, status: int, method: str, path: str, text: str) -> None:
        super().__init__(f"Prefect API answered {status} to {method} {path}: {text[:300]}")
        self.status = status


class VariablesUnreachable(Exception):
    """The API could not be reached."""

    def __init__(self, method: str, path: str, exc: Exception) -> None:
        super().__init__(
            f"cannot reach the Prefect API for {method} {path} ({type(exc).__name__}: {exc}); "
            "check PREFECT_API_URL and that the server is running"
        )


def _translate(exc: httpx.HTTPError, method: str, path: str, ok_status: int | None) -> None:
    """None when ``exc`` is the answer ``ok_status`` (404 missing, 409 taken); else raise our typed error."""
    if isinstance(exc, httpx.HTTPStatusError):
        if ok_status is not None and exc.response.status_code == ok_status:
            return None
        raise VariablesAPIError(exc.response.status_code, method, path, exc.response.text) from None
    raise VariablesUnreachable(method, path, exc) from None


async def request(method: str, path: str, *, json: Any = None, ok_status: int | None = None) -> httpx.Response | None:
    """One request on the loop's client; None when the answer is ``ok_status`` (e.g. 404 or 409)."""

    async def call(client: Any) -> httpx.Response:
        return await client.request(method, path, json=json)  # type: ignore[no-any-return]

    try:
        return await with_client(call)
    except (httpx.HTTPStatusError, httpx.TransportError) as exc:
        return _translate(exc, method, path, ok_status)


def request_sync(method: str, path: str, *, json: Any = None, ok_status: int | None = None) -> httpx.Response | None:
    """Blocking twin of :func:`request` on the calling thread's client (no hop to an event loop)."""

    def call(client: Any) -> httpx.Response:
        return client.request(method, path, json=json)  # type: ignore[no-any-return]

    try:
        return with_sync_client(call)
    except (httpx.HTTPStatusError, httpx.TransportError) as exc:
        return _translate(exc, method, path, ok_status)


async def read(name: str) -> dict[str, Any] | None:
    """The variable ``name`` (id, name, value, created, updated...), or None."""
    resp = await request("GET", f"/variables/name/{name}", ok_status=404)
    return None if resp is None else resp.json()  # type: ignore[no-any-return]


def read_sync(name: str) -> dict[str, Any] | None:
    """Blocking twin of :func:`read` on the calling thread's client."""
    resp = request_sync("GET", f"/variables/name/{name}", ok_status=404)
    return None if resp is None else resp.json()  # type: ignore[no-any-return]


async def read_many(names: list[str]) -> dict[str, dict[str, Any]]:
    """Variables by name, 200 per request."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(names), PAGE):
        chunk = names[i : i + PAGE]
        resp = await request("POST", "/variables/filter", json={"variables": {"name": {"any_": chunk}}, "limit": len(chunk)})
        assert resp is not None
        for var in resp.json():
            out[var["name"]] = var
    return out


async def scan(like: str, *, offset: int, limit: int = PAGE) -> list[dict[str, Any]]:
    """One page of variables whose name matches SQL LIKE ``like``, by name."""
    resp = await request(
        "POST", "/variables/filter",
        json={"variables": {"name": {"like_": like}}, "offset": offset, "limit": limit, "sort": "NAME_ASC"},
    )
    assert resp is not None
    return resp.json()  # type: ignore[no-any-return]


async def create(name: str, value: Any) -> dict[str, Any] | None:
    """Create a variable; None if the name is taken (409), the one atomic primitive Variables offer."""
    resp = await request("POST", "/variables/", json={"name": name, "value": value}, ok_status=409)
    return None if resp is None else resp.json()  # type: ignore[no-any-return]


def create_sync(name: str, value: Any) -> dict[str, Any] | None:
    """Blocking twin of :func:`create` on the calling thread's client."""
    resp = request_sync("POST", "/variables/", json={"name": name, "value": value}, ok_status=409)
    return None if resp is None else resp.json()  # type: ignore[no-any-return]


async def patch(name: str, value: Any) -> bool:
    """Replace an existing variable's value; False if there is none."""
    return await request("PATCH", f"/variables/name/{name}", json={"value": value}, ok_status=404) is not None


def patch_sync(name: str, value: Any) -> bool:
    """Blocking twin of :func:`patch` on the calling thread's client."""
    return request_sync("PATCH", f"/variables/name/{name}", json={"value": value}, ok_status=404) is not None


async def patch_id(var_id: str, value: Any) -> bool:
    """Replace one variable instance's value by id; False if it is gone."""
    return await request("PATCH", f"/variables/{var_id}", json={"value": value}, ok_status=404) is not None


async def delete(name: str) -> bool:
    """Delete by name; False if there was none."""
    return await request("DELETE", f"/variables/name/{name}", ok_status=404) is not None


def delete_sync(name: str) -> bool:
    """Blocking twin of :func:`delete` on the calling thread's client."""
    return request_sync("DELETE", f"/variables/name/{name}", ok_status=404) is not None


async def delete_id(var_id: str) -> bool:
    """Delete one variable instance by id; False if it is gone."""
    return await request("DELETE", f"/variables/{var_id}", ok_status=404) is not None


def delete_id_sync(var_id: str) -> bool:
    """Blocking twin of :func:`delete_id` on the calling thread's client."""
    return request_sync("DELETE", f"/variables/{var_id}", ok_status=404) is not None
