"""The asyncio client: the same calls as service/client/sync.py, awaited. Everything but sending,
sleeping and reading is in service/client/protocol.py, shared by both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Literal, overload

import httpx

from service.client.errors import PandaServeError
from service.client.files import FileInput
from service.client.protocol import Call, Retry, TurnReader, UploadProgress, build, chat_call, embed_call, error
from service.client.sse import aiter_events
from service.client.sync import DEFAULT_TIMEOUT, DEFAULT_URL, auth_headers
from service.client.types import ChatReply, Delta, Embeddings, Model, Session


class AsyncChatStream:
    """A streamed turn: `async for` its `Delta`s; `await reply()` is the whole turn once it is done.
    Closing it early (`aclose()`, leaving `async with`) abandons the turn: nothing is committed."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response, self._url = response, url
        self._reader = TurnReader()
        self._deltas = self._read()  # one generator for the stream's life, as in ChatStream

    async def _read(self) -> AsyncGenerator[Delta, None]:
        try:
            async for event in aiter_events(self._response.aiter_lines()):
                delta = self._reader.feed(event)
                if delta is not None:
                    yield delta
                if self._reader.result is not None:
                    return
            self._reader.finish()
        except httpx.TransportError as exc:
            raise PandaServeError.from_transport(exc, self._url) from exc
        finally:
            await self._response.aclose()

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas

    async def reply(self) -> ChatReply:
        """The finished turn (what /chat answers unstreamed); reads the rest of the stream if need be."""
        async for _ in self._deltas:
            pass
        return self._reader.finish()

    async def aclose(self) -> None:
        await self._deltas.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncClient:
    """PandaServe over HTTP, for asyncio: `chat`, `embed`, sessions and models. Errors raise
    PandaServeError; 429 and 503 are retried as `retry` says (Retry-After honoured)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or Retry()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=auth_headers(api_key, headers),
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def _send(self, call: Call, stream: bool = False, on_upload: UploadProgress | None = None) -> httpx.Response:
        """The response to `call`, retried while the retry rule allows; its body read unless `stream`."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(build(self._http, call, on_upload), stream=True)
            except httpx.TransportError as exc:
                raise PandaServeError.from_transport(exc, self.url) from exc
            if response.is_success and stream:
                return response
            try:
                await response.aread()
            except httpx.TransportError as exc:
                raise PandaServeError.from_transport(exc, self.url) from exc
            finally:
                await response.aclose()
            if response.is_success:
                return response
            wait = self.retry.wait_s(response, attempt)
            if wait is None:
                raise error(response)
            await asyncio.sleep(wait)
            attempt += 1

    @overload
    async def chat(
        self,
        message: str,
        files: Iterable[FileInput] = (),
        *,
        session: str | None = None,
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_token_ids: bool = False,
        on_upload: UploadProgress | None = None,
    ) -> ChatReply: ...

    @overload
    async def chat(
        self,
        message: str,
        files: Iterable[FileInput] = (),
        *,
        session: str | None = None,
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_token_ids: bool = False,
        on_upload: UploadProgress | None = None,
    ) -> AsyncChatStream: ...

    async def chat(
        self,
        message: str,
        files: Iterable[FileInput] = (),
        *,
        session: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        return_token_ids: bool = False,
        on_upload: UploadProgress | None = None,
    ) -> ChatReply | AsyncChatStream:
        """One turn: a new session unless `session` names one. With `stream=True` an AsyncChatStream,
        returned once the server has accepted the turn (its refusals raise here, as plain HTTP errors)."""
        sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
        call = chat_call(message, files, session, stream, sampling, return_token_ids)
        response = await self._send(call, stream, on_upload)
        return AsyncChatStream(response, self.url) if stream else ChatReply.from_json(response.json())

    async def embed(self, files: Iterable[FileInput], on_upload: UploadProgress | None = None) -> Embeddings:
        """ImageBind's embedding of each file, in the order of the fields (image, audio, ...), then sent."""
        return Embeddings.from_json((await self._send(embed_call(files), on_upload=on_upload)).json())

    async def create_session(self, metadata: Mapping[str, str] | None = None) -> Session:
        call = Call("POST", "/sessions", json={"metadata": dict(metadata or {})})
        return Session.from_json((await self._send(call)).json())

    async def get_session(self, session_id: str) -> Session:
        return Session.from_json((await self._send(Call("GET", f"/sessions/{session_id}"))).json())

    async def delete_session(self, session_id: str) -> None:
        await self._send(Call("DELETE", f"/sessions/{session_id}"))

    async def models(self) -> list[Model]:
        return [Model.from_json(m) for m in (await self._send(Call("GET", "/v1/models"))).json()["data"]]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
