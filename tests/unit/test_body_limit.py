"""Oversized bodies are refused with 413, declared or streamed."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.api.limits import BodySizeLimit


def client() -> TestClient:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return {"keys": sorted(body)}

    app.add_middleware(BodySizeLimit, max_bytes=1000)
    return TestClient(app)


def test_small_bodies_pass_declared_or_streamed() -> None:
    assert client().post("/echo", json={"a": 1}).json() == {"keys": ["a"]}
    streamed = client().post(
        "/echo", content=iter([b'{"b"', b": 2}"]), headers={"content-type": "application/json"}
    )
    assert streamed.json() == {"keys": ["b"]}


def test_large_bodies_get_413_declared_or_streamed() -> None:
    declared = client().post(
        "/echo", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413
    streamed = client().post(
        "/echo",
        content=iter([b"{", b" " * 3000, b"}"]),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413 and "larger than 1000 bytes" in streamed.text
