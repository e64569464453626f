"""The HTTP edge of the service, as one ASGI middleware in front of every route (`RequestGuard`).

- Load: at most `S4D_MAX_PENDING` requests are handled or waiting at once; one more gets 503
  `overloaded` with Retry-After at once, before its body is read.
- Body size: every POST route has a limit (uploads `S4D_MAX_UPLOAD_MB`, JSON `S4D_MAX_JSON_MB`). A
  declared Content-Length above it is answered 413 before the body is read; a chunked body (no length)
  is counted as it arrives and refused the moment it passes the limit, so nothing above the limit is
  ever held.
- Content type: uploads must be multipart/form-data with a boundary, the JSON routes application/json;
  anything else gets 415 `bad_content_type` naming what to send (a binary multipart body never reaches
  the JSON parser).
- Every answer >= 400 is JSON `{"error", "code", "status"}`: the API's own answers already are; the
  framework's (404, 405, validation 400, its 500/503) are rewritten with a code, keeping their message.
- Each answer is counted for /health (ok / client_error / server_error / overloaded) and each refusal is
  logged at WARNING in one line.
"""
from __future__ import annotations

import json
import logging
import re
import threading

from serving.inputs import ServingError
from serving.settings import ServingSettings

logger = logging.getLogger("s4d.serving")

UPLOAD_ROUTES = {"/predict_video": "video", "/predict_image": "image"}
JSON_ROUTES = ("/classify_clips", "/metadata")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file
RETRY_AFTER_S = 2


class Counters:
    """Answers by outcome, shared by the middleware and /health (one worker process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {"ok": 0, "client_error": 0, "server_error": 0, "overloaded": 0}
        self.pending = 0

    def add(self, status: int) -> None:
        outcome = ("ok" if status < 400 else "client_error" if status < 500 else
                   "overloaded" if status == 503 else "server_error")
        with self._lock:
            self.counts[outcome] += 1

    def enter(self, limit: int) -> bool:
        with self._lock:
            if self.pending >= limit:
                return False
            self.pending += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.pending -= 1

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.counts, "pending": self.pending}


COUNTERS = Counters()

# Framework answers without a code -> (code, message when the framework gave none).
DEFAULT_CODES = {400: ("bad_request", "the request could not be read"), 404: ("not_found", "no such route"),
                 405: ("method_not_allowed", "this route does not take this HTTP method"),
                 413: ("too_large", "the request is too large"), 415: ("bad_content_type", "unsupported content type"),
                 500: ("internal", "internal error, see the server log"),
                 503: ("overloaded", "the service is busy; retry later")}


def error_body(error: ServingError) -> bytes:
    return json.dumps(error.to_dict()).encode()


async def send_error(send, error: ServingError) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(error_body(error))).encode())]
    if error.status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error_body(error)})


class RequestGuard:
    def __init__(self, app, settings: ServingSettings, counters: Counters = COUNTERS):
        self.app, self.settings, self.counters = app, settings, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        status_seen: list[int] = []

        async def counted(message):
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        async def refuse(error: ServingError) -> None:
            logger.warning("%s %s -> %d %s: %s", method, path, error.status, error.code, error.message)
            await send_error(counted, error)

        if method != "POST":  # GET pages, probes, metrics: light, never queued
            await self.app(scope, receive, self._coded(scope, counted))
        elif not self.counters.enter(self.settings.max_pending):
            await refuse(ServingError("overloaded", f"{self.settings.max_pending} requests are already being "
                                      f"handled (S4D_MAX_PENDING); retry in {RETRY_AFTER_S} s"))
        else:
            try:
                await self._post(scope, receive, counted, refuse)
            finally:
                self.counters.leave()
        if status_seen:
            self.counters.add(status_seen[0])

    async def _post(self, scope, receive, send, refuse) -> None:
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if path in UPLOAD_ROUTES:
            field = UPLOAD_ROUTES[path]
            how = f"send the file as the multipart/form-data file field '{field}' (curl -F {field}=@FILE)"
            if not content_type.startswith("multipart/form-data"):
                return await refuse(ServingError("bad_content_type", f"Content-Type {content_type or '(none)'!r}: "
                                                 + how))
            if "boundary=" not in content_type:
                return await refuse(ServingError("bad_request", "multipart/form-data without a boundary: " + how))
            limit, what = self.settings.max_upload_bytes + MULTIPART_OVERHEAD, "upload"
            setting, shown = "S4D_MAX_UPLOAD_MB", self.settings.max_upload_mb
        elif path in JSON_ROUTES:
            if content_type and not content_type.startswith("application/json"):
                return await refuse(ServingError("bad_content_type", f"Content-Type {content_type!r}: send JSON "
                                                 f"(application/json), e.g. {{\"clips\": ...}}"))
            how = "send JSON: {\"clips\": [...]}"
            limit, what = self.settings.max_json_bytes, "JSON body"
            setting, shown = "S4D_MAX_JSON_MB", self.settings.max_json_mb
        else:  # unknown route: the framework answers 404/405 (made JSON by _coded)
            return await self.app(scope, receive, self._coded(scope, send))

        def too_large(size: int) -> ServingError:
            return ServingError("too_large", f"{what}: {size / 2**20:.1f} MiB is above the {what} limit of "
                                f"{shown:g} MiB ({setting})")

        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await refuse(ServingError("bad_request", f"Content-Length {length[:40]!r} is not a number"))
            if declared > limit:  # answered at once; what the client still sends is read and dropped
                await refuse(too_large(declared))
                return await _drain(receive, cap=min(declared, 4 * limit))
            # within the limit (the HTTP server never passes more than the declared length): streamed,
            # after a look at the first part's headers
            first = await receive()
            if first["type"] == "http.disconnect":
                return
            problem = _part_header_problem(first.get("body", b"")) if path in UPLOAD_ROUTES else None
            if problem:
                if first.get("more_body"):
                    await _drain(receive, cap=declared)
                return await refuse(ServingError("bad_request", f"{problem}; {how}"))
            pending = [first]

            async def receive_rest():
                return pending.pop() if pending else await receive()

            texts: list[bool] = []
            return await self.app(scope, _no_text_fields(receive_rest, UPLOAD_ROUTES[path], texts)
                                  if path in UPLOAD_ROUTES else receive_rest, self._coded(scope, send, how, texts))
        chunks, total = [], 0
        while True:  # read the body here, counting: never more than `limit` bytes are held
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await refuse(too_large(total))
                return await _drain(receive, cap=4 * limit)
            chunks.append(body)
            if not message.get("more_body"):
                break
        whole = b"".join(chunks)
        chunks.clear()
        problem = _part_header_problem(whole) if path in UPLOAD_ROUTES else None
        if problem:
            return await refuse(ServingError("bad_request", f"{problem}; {how}"))
        texts: list[bool] = []
        if path in UPLOAD_ROUTES:
            whole = _rename_text_fields(whole, UPLOAD_ROUTES[path], texts)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as the server would

        await self.app(scope, replay, self._coded(scope, send, how, texts))

    def _coded(self, scope, send, how: str | None = None, texts: list | None = None):
        """`send`, except that an error answer without a `code` is rewritten as JSON with one (its message
        kept). A bare 500 on an upload route is the framework failing to parse the multipart body: a 400."""
        held: list[dict] = []
        path, method = scope.get("path", ""), scope.get("method", "")

        async def send_coded(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.append(message)
                return
            if not held:
                return await send(message)
            held.append(message)
            if message.get("more_body"):
                return
            status = held[0]["status"]
            body = b"".join(m.get("body", b"") for m in held[1:])
            held.clear()
            try:
                parsed = json.loads(body or b"null")
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "code" in parsed:  # the API's own answer
                level = logging.ERROR if status >= 500 and status != 503 else logging.WARNING
                logger.log(level, "%s %s -> %d %s: %s", method, path, status, parsed.get("code"),
                           str(parsed.get("error", ""))[:300])
                return await send_error(send, ServingError(parsed["code"], parsed.get("error", ""), status)) \
                    if status == 503 else await _send_raw(send, status, body)
            message_text = _message(parsed, body)
            if texts and status == 400 and path in UPLOAD_ROUTES:
                field = UPLOAD_ROUTES[path]
                error = ServingError("bad_request", f"the form field '{field}' holds text (a URL?), not a file; "
                                     f"the server never downloads anything: {how}")
            elif status == 500 and path in UPLOAD_ROUTES:
                error = ServingError("bad_request", f"the upload could not be read: {how}")
            elif status == 400 and "too many clips" in message_text:
                error = ServingError("too_many_clips", message_text)
            elif status == 400 and path in JSON_ROUTES:
                error = ServingError("bad_clips", message_text or "the clips could not be read")
            else:
                code, default = DEFAULT_CODES.get(status, ("bad_request" if status < 500 else "internal", ""))
                error = ServingError(code, message_text or default, status)
            level = logging.ERROR if error.status >= 500 and error.status != 503 else logging.WARNING
            logger.log(level, "%s %s -> %d %s: %s", method, path, error.status, error.code, error.message[:300])
            await send_error(send, error)

        return send_coded


TEXT_FIELD_WINDOW = 64 * 1024  # bytes held back per chunk so a part header split across chunks is seen whole


def _rename_text_fields(data: bytes, field: str, found: list) -> bytes:
    """Rename a *text* form field named like the upload field (a part without a file name) to `_text`.
    The framework would take its value as a URL and download it (memory and time unbounded, a request
    to wherever the client says); renamed, it is an unknown field and the upload field is missing."""
    pattern = re.compile(rb'(?i)(content-disposition:[^\r\n]*?\bname=)"' + field.encode() + rb'"(?![^\r\n]*filename)')
    data, count = pattern.subn(rb'\1"_text"', data)  # same length: "video" / "image" -> "_text"
    if count:
        found.append(True)
    return data


def _no_text_fields(receive, field: str, found: list):
    """`receive` with _rename_text_fields applied to the streamed body (the last TEXT_FIELD_WINDOW bytes of
    each chunk wait for the next one, so a part header is never split)."""
    carry = b""

    async def receive_scanned():
        nonlocal carry
        message = await receive()
        if message["type"] != "http.request":
            return message
        data = _rename_text_fields(carry + message.get("body", b""), field, found)
        more = message.get("more_body", False)
        if more:
            cut = max(0, len(data) - TEXT_FIELD_WINDOW)
            carry, data = data[cut:], data[:cut]
        else:
            carry = b""
        return {"type": "http.request", "body": data, "more_body": more}

    return receive_scanned


MAX_PART_HEADER_LINE = 4096  # python-multipart refuses longer part header lines with a bare parse error


def _part_header_problem(head: bytes) -> str | None:
    """What is wrong with the first multipart part's header lines, when the parser would only say
    "invalid multipart data" (a file name of thousands of characters)."""
    end = head.find(b"\r\n\r\n")
    lines = (head[:end] if end >= 0 else head).split(b"\r\n")
    longest = max((len(line) for line in lines), default=0)
    if longest > MAX_PART_HEADER_LINE:
        return (f"a multipart part header line is {longest} bytes, above {MAX_PART_HEADER_LINE} (is the file "
                f"name that long? the server does not use it: send a short one)")
    return None


def _message(parsed, body: bytes) -> str:
    """The framework's message; for a validation error, what each failing field says."""
    if isinstance(parsed, (list, tuple)) and len(parsed) == 1:
        parsed = parsed[0]  # BentoML wraps some errors in a list
    if isinstance(parsed, dict):
        detail = parsed.get("detail")
        if isinstance(detail, list) and detail:
            parts = []
            for item in detail[:5]:
                if isinstance(item, dict):
                    where = ".".join(str(x) for x in item.get("loc", ()) if x not in ("body",))
                    parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            if parts:
                return "; ".join(parts)[:2000]
        text = parsed.get("error") or parsed.get("message") or ""
        return text if isinstance(text, str) else json.dumps(text)[:2000]
    return body.decode("utf-8", "replace").strip()[:2000]


class QuietClientErrors(logging.Filter):
    """Drops the framework's ERROR + traceback for what is the client's fault (a request that fails
    validation, a client that disconnects mid-upload): the RequestGuard logs those in one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from pydantic import ValidationError
        from starlette.requests import ClientDisconnect

        if isinstance(exc, (ValidationError, ClientDisconnect, UnicodeDecodeError, json.JSONDecodeError)):
            return False  # (the last two: a form field holding text or bytes where the file should be)
        status = getattr(getattr(exc, "error_code", None), "value", None) or getattr(exc, "status_code", 500)
        return not (isinstance(status, int) and status < 500)


def quiet_framework_logs() -> None:
    for name in ("bentoml._internal.server.http_app", "bentoml.serve"):
        logging.getLogger(name).addFilter(QuietClientErrors())


async def _send_raw(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive, cap: int) -> None:
    """After a refusal: read and drop what the client is still sending (up to `cap` bytes), so a client
    that sends its whole body before reading gets the answer instead of a broken pipe."""
    seen = 0
    while seen < cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return
