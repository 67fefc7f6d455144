"""The OpenAI completions API as rnnlm speaks it: a request body checked field by field, and the
JSON shapes of responses, stream chunks and errors.

A request may carry `model`, `prompt` (a string or a list of strings; "" starts from the start
token), `max_tokens`, `temperature`, `top_p`, `top_k` (an rnnlm extension), `stop` (a string or
up to 4), `seed`, `n`, `stream`, `stream_options.include_usage` and `user`. OpenAI's other options
(echo, logprobs, suffix, best_of, penalties, logit_bias) are accepted at their no-op values only;
any other field is refused. Fields left out take the exported model's generation defaults.

Any body, whatever its bytes, nesting, numbers or strings, gives a CompletionRequest or an ApiError
(a 4xx naming the field): values are checked for type and range before they are converted or
compared (an integer too large for a float is refused as such), a string holding a lone surrogate
is refused, and an error message quotes a client's value only cut short and encodable.

Choice k of a request (prompt i, sample j, k = i * n + j) is sampled with seed + k (modulo 2^64),
the numbering Generator.generate_batch gives its prompts: its text equals
generate(prompt_i, ..., seed=seed + k).
"""

import json
import sys
import time
import uuid
from dataclasses import dataclass, replace

from rnnlm.runtime.generator import Generator
from rnnlm.runtime.sampler import SamplingParams
from rnnlm.runtime.sequence import Sequence

MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_SEED = 2**64 - 1  # seeds are integers in [0, 2^64)
MAX_INT = 2**63 - 1  # top_k beyond int64 is refused before it reaches the sampler
MAX_FLOAT = sys.float_info.max  # an integer past this has no float: refused before any conversion
SHORT = 60  # characters of a client's value quoted in an error message
FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "stream",
          "stream_options", "user")
NO_OP = {"echo": False, "logprobs": None, "suffix": None, "best_of": 1, "presence_penalty": 0,
         "frequency_penalty": 0, "logit_bias": {}}  # OpenAI options served only at these values


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}.
    The message and param are made encodable (a lone surrogate becomes a backslash escape), and a
    param longer than SHORT characters is cut, so that any error has a body to send."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        message = encodable(message)
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.param = None if param is None else encodable(param if len(param) <= SHORT else param[:SHORT - 3] + "...")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def encodable(text: str) -> str:
    """text with what UTF-8 cannot encode (lone surrogates) written as backslash escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class CompletionRequest:
    """A checked request: prompts x n choices, each sampled with `params` (choice k: seed + k)."""

    prompts: tuple[str, ...]
    n: int
    params: SamplingParams
    stream: bool
    include_usage: bool

    def choice_params(self, k: int) -> SamplingParams:
        """Choice k's params: seed + k, modulo 2^64 as the sampling rule takes seeds."""
        seed = self.params.seed
        return self.params if seed is None else replace(self.params, seed=(seed + k) % (MAX_SEED + 1))


def parse_request(body: bytes, generator: Generator, model_id: str, max_tokens: int,
                  max_choices: int) -> CompletionRequest:
    """Check a request body; raise ApiError naming the first bad field. Any bytes give a request or an
    ApiError: a value is checked for its type and range before it is converted, compared or quoted."""
    try:
        return _parse(_json_object(body), generator, model_id, max_tokens, max_choices)
    except RecursionError:  # json.loads is the only recursive reader of the body; this is a safety net
        raise ApiError(400, "the request body nests too deeply; send a flat JSON object") from None


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON (it nests too deeply); send a JSON object") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of more digits than Python converts
        why = "a number in it has too many digits" if "integer string conversion" in str(e) else _cut(str(e), 200)
        raise ApiError(400, f"the request body is not valid JSON ({why}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_json_type(data)}")
    return data


def _parse(data: dict, generator: Generator, model_id: str, max_tokens: int, max_choices: int) -> CompletionRequest:
    for field, value in data.items():
        if field not in FIELDS and field not in NO_OP:
            raise ApiError(400, f"unrecognized request argument supplied: {_cut(field, SHORT)}", field,
                           "unknown_parameter")
        if field in NO_OP and value is not None and not _same(value, NO_OP[field]):
            raise ApiError(400, f"{field} is not supported by this server; leave it out or set it to "
                                f"{json.dumps(NO_OP[field])}", field, "unsupported_parameter")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {_short(model)}", "model")
    if model is not None and model != model_id:
        raise ApiError(404, f"the model {_short(model)} does not exist; this server serves {json.dumps(model_id)} "
                            "(GET /v1/models)", "model", "model_not_found")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, f"user must be a string, got {_short(user)}", "user")
    prompt = "" if data.get("prompt") is None else data["prompt"]
    prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt) if isinstance(prompt, list) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a non-empty list of strings (token-id prompts are not "
                            f"supported), got {_short(prompt)}", "prompt")
    for i, p in enumerate(prompts):
        _unicode(p, "prompt" if isinstance(prompt, str) else f"prompt[{i}]", "prompt")
    n = _integer(data, "n", 1, max_choices, 1, " (this server's limit)")
    if len(prompts) * n > max_choices:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} ask for {len(prompts) * n} choices; this server "
                            f"takes at most {max_choices} per request", "n" if n > 1 else "prompt")
    stream, options = _boolean(data, "stream"), data.get("stream_options")
    if options is not None and not (stream and isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise ApiError(400, 'stream_options must be {"include_usage": true|false}, and only with stream: true',
                       "stream_options")
    include_usage = _boolean(options or {}, "include_usage", "stream_options.include_usage")
    sampling = {"temperature": _number(data, "temperature"), "top_p": _number(data, "top_p"),
                "top_k": _integer(data, "top_k", 0, MAX_INT, None, " (0 keeps every token)"), "stop": _stop(data),
                "seed": _integer(data, "seed", 0, MAX_SEED, None, " (2^64 - 1)")}
    for field, value in sampling.items():
        if value is not None:  # one field at a time, so that the runtime's own check names the field at fault
            try:
                generator.params(**{field: value})
            except (ValueError, TypeError, OverflowError) as e:  # RnnlmError is a ValueError
                raise ApiError(400, str(e), field) from None
    limit = _integer(data, "max_tokens", 1, max_tokens, min(generator.defaults.max_new_tokens, max_tokens),
                     " (this server's limit)")
    try:
        params = generator.params(max_new_tokens=limit, **sampling)
    except (ValueError, TypeError, OverflowError) as e:  # each field passed alone: the model's defaults fail
        message = f"the exported model's generation defaults fail their own checks ({e})"
        raise ApiError(500, message, kind="server_error") from None
    return CompletionRequest(prompts, n, params, stream, include_usage)


def start_sequences(request: CompletionRequest, generator: Generator, unknown: str,
                    max_prompt_tokens: int) -> list[Sequence]:
    """One Sequence per choice, in choice order; ApiError for a prompt the vocabulary or the limit refuses."""
    sequences = []
    for i, prompt in enumerate(request.prompts):
        where = "prompt" if len(request.prompts) == 1 else f"prompt[{i}]"
        for j in range(request.n):
            try:
                sequence = generator.start(prompt, request.choice_params(i * request.n + j), unknown)
            except (ValueError, TypeError, OverflowError) as e:  # RnnlmError: characters the vocabulary lacks
                raise ApiError(400, f"{where}: {e}", "prompt") from None
            if len(sequence.prompt_ids) > max_prompt_tokens:
                raise ApiError(400, f"{where} is {len(sequence.prompt_ids)} tokens long; this server takes at most "
                                    f"{max_prompt_tokens}", "prompt", "context_length_exceeded")
            sequences.append(sequence)
    return sequences


# ----------------------------------------------------------------------------- responses


class Responses:
    """What one completion answers with: its JSON body, or its server-sent events (chunks, usage)."""

    def __init__(self, model_id: str, request: CompletionRequest, sequences: list[Sequence]) -> None:
        self.request, self.sequences = request, sequences
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": model_id, "seed": request.params.seed}  # drawn for the request when it gave none
        # Chunks are built by string concatenation around the head: this runs once per token per stream.
        self._chunk = json.dumps(self.head)[:-1] + ', "choices": [{"text": '

    def usage(self) -> dict:
        """Prompt tokens count once per prompt (not per choice), as OpenAI counts them."""
        prompt = sum(len(self.sequences[i * self.request.n].prompt_ids) for i in range(len(self.request.prompts)))
        completion = sum(len(s.token_ids) for s in self.sequences)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def body(self) -> dict:
        choices = [{"text": s.text, "index": k, "logprobs": None, "finish_reason": s.finish_reason}
                   for k, s in enumerate(self.sequences)]
        return {**self.head, "choices": choices, "usage": self.usage()}

    def events(self, pieces: list[tuple[int, str, str | None]]) -> str:
        """`data:` events for the pieces (choice, text, finish_reason) of one or more steps: one chunk
        per choice, its texts joined, in the order the choices first appear."""
        merged: dict[int, tuple[str, str | None]] = {}
        for index, text, finish_reason in pieces:
            merged[index] = (merged.get(index, ("", None))[0] + text, finish_reason)
        usage = ', "usage": null' if self.request.include_usage else ""
        return "".join(f'data: {self._chunk}{json.dumps(text)}, "index": {index}, "logprobs": null, '
                       f'"finish_reason": {json.dumps(finish_reason)}}}]{usage}}}\n\n'
                       for index, (text, finish_reason) in merged.items())

    def usage_chunk(self) -> str:
        return f"data: {json.dumps({**self.head, 'choices': [], 'usage': self.usage()})}\n\n"


def error_event(error: ApiError) -> str:
    """A failure after a stream began, as OpenAI streams one (clients raise it), before `data: [DONE]`."""
    return f"data: {json.dumps(error.body())}\n\n"


def _integer(data: dict, field: str, low: int, high: int, default: int | None, note: str = "") -> int | None:
    value = data.get(field)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"{field} must be an integer from {low} to {high}{note}, got {_short(value)}", field)
    return value


def _number(data: dict, field: str) -> float | None:
    """A finite number as a float, or None; an integer too large for a float is refused before conversion."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -MAX_FLOAT <= value <= MAX_FLOAT:
        raise ApiError(400, f"{field} must be a finite number, got {_short(value)}", field)
    return float(value)  # exact comparisons above: int against float never overflows, NaN fails them


def _boolean(data: dict, field: str, name: str | None = None) -> bool:
    value = data.get(field)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{name or field} must be true or false, got {_short(value)}", name or field)
    return bool(value)


def _stop(data: dict) -> tuple[str, ...] | None:
    stop = data.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) and len(stop) <= MAX_STOP else None
    if stops is None or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOP} of them, "
                            f"got {_short(stop)}", "stop")
    for i, s in enumerate(stops):
        _unicode(s, "stop" if isinstance(stop, str) else f"stop[{i}]", "stop")
    return tuple(stops)


def _unicode(text: str, where: str, field: str) -> None:
    """Refuse a string holding a lone surrogate (JSON can escape U+D800 to U+DFFF alone): it is not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{where} holds a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start}, "
                            "which is not Unicode text; send text that UTF-8 can encode", field) from None


def _same(value, no_op) -> bool:
    """value equals an option's no-op value, compared only between like types (1.0 == 1, never True == 1)."""
    if isinstance(no_op, bool) or isinstance(value, bool):
        return value is no_op
    if isinstance(no_op, int):
        return isinstance(value, int | float) and value == no_op
    return type(value) is type(no_op) and value == no_op


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value, limit: int = SHORT) -> str:
    """A JSON value for a message, cut to `limit` characters. It is rendered only as far as it is shown,
    so a value of any size or nesting costs a bounded number of steps and never recurses deeply."""
    text, pieces = "", _pieces(value, limit)
    for piece in pieces:
        text += piece
        if len(text) > limit:
            pieces.close()
            return text[:limit - 3] + "..."
    return text


def _pieces(value, limit: int):
    """The text of a JSON value, piece by piece: each level of nesting yields a bracket before it goes
    deeper, so a reader that stops after `limit` characters never goes more than `limit` levels down."""
    if isinstance(value, list):
        yield "["
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(item, limit)
        yield "]"
    elif isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield (", " if i else "") + _scalar(str(key), limit) + ": "
            yield from _pieces(item, limit)
        yield "}"
    else:
        yield _scalar(value, limit)


def _scalar(value, limit: int) -> str:
    if isinstance(value, str):
        return json.dumps(value[:limit + 1], ensure_ascii=False)  # a lone surrogate is escaped by ApiError
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"(an integer of {value.bit_length()} bits)"  # shown cut anyway; str() of it would be slow
    return json.dumps(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
