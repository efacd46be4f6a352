"""How a request body is read and a client's mistake answered: strict JSON (``read_json``), and ``ApiError``, the
OpenAI error object with the HTTP status it deserves."""

from __future__ import annotations

import json
import math

MAX_DEPTH = 64  # the deepest nesting of objects and lists a request body may have (OpenAI's need 6)


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object with ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, exit_code: int = 2) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.exit_code = exit_code  # what ``vqa ask --server`` exits with for it

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          "vqa_exit_code": self.exit_code}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


def too_much(need: int, limit: int, what: str) -> ApiError:
    from vqa_cli.units import size_text

    return ApiError(400, f"this request needs {size_text(need)} ({what}); this server takes requests of up to "
                         f"{size_text(limit)} (--max-request-memory)", param="frames", code="request_too_large")


class NonFinite:
    """A number JSON cannot hold (``NaN``, ``Infinity``, ``1e999``) where the body had it, to be named."""

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> float | NonFinite:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text)


def read_json(data: bytes) -> object:
    """A request body as JSON, refused (400) unless it is strict JSON: no ``NaN`` or ``Infinity`` (Python's json
    takes them) nor numbers past a float's range, no NUL in any string, at most ``MAX_DEPTH`` levels deep. The
    problem's place is named (``param``: ``temperature``, ``messages[0].content``)."""
    try:
        body = json.loads(data, parse_constant=NonFinite, parse_float=_float)
    except RecursionError:
        raise bad(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, an integer of over 4300 digits, bad UTF-8
        raise bad(f"the request body is not JSON ({exc})") from None
    stack: list[tuple[object, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, NonFinite):
            raise bad(f"{where or 'the body'} must be a finite number, not {value.text} (JSON has no NaN or "
                      "Infinity)", where or None)
        if isinstance(value, str) and "\0" in value:
            raise bad(f"{where or 'the body'} has a NUL character", where or None)
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:  # named by its top-level field
                raise bad(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)",
                          where.split(".")[0].split("[")[0] or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\0" in key:
                    raise bad(f"a key of {where or 'the body'} has a NUL character", where or None)
                inner = (f"{where}.{key}" if where else str(key)) if isinstance(value, dict) else f"{where}[{key}]"
                stack.append((item, inner, depth + 1))
    return body
