"""The OpenAI completions API as rnnlm speaks it: a request body checked field by field, and the
JSON shapes of responses, stream chunks and errors.

A request may carry `model`, `prompt` (a string or a list of strings; "" starts from the start
token), `max_tokens`, `temperature`, `top_p`, `top_k` (an rnnlm extension), `stop` (a string or
up to 4), `seed`, `n`, `stream`, `stream_options.include_usage` and `user`. OpenAI's other options
(echo, logprobs, suffix, best_of, penalties, logit_bias) are accepted at their no-op values only;
any other field is refused. Fields left out take the exported model's generation defaults.

Choice k of a request (prompt i, sample j, k = i * n + j) is sampled with seed + k, the numbering
Generator.generate_batch gives its prompts: its text equals generate(prompt_i, ..., seed=seed + k).
"""

import json
import time
import uuid
from dataclasses import dataclass, replace

from rnnlm.errors import RnnlmError
from rnnlm.runtime.generator import Generator
from rnnlm.runtime.sampler import SamplingParams
from rnnlm.runtime.sequence import Sequence

MAX_STOP = 4  # OpenAI's limit on stop strings
FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "stream",
          "stream_options", "user")
NO_OP = {"echo": False, "logprobs": None, "suffix": None, "best_of": 1, "presence_penalty": 0,
         "frequency_penalty": 0, "logit_bias": {}}  # OpenAI options served only at these values


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    """A checked request: prompts x n choices, each sampled with `params` (choice k: seed + k)."""

    prompts: tuple[str, ...]
    n: int
    params: SamplingParams
    stream: bool
    include_usage: bool

    def choice_params(self, k: int) -> SamplingParams:
        seed = self.params.seed
        return self.params if seed is None else replace(self.params, seed=seed + k)


def parse_request(body: bytes, generator: Generator, model_id: str, max_tokens: int,
                  max_choices: int) -> CompletionRequest:
    """Check a request body; raise ApiError naming the first bad field."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    for field, value in data.items():
        if field in NO_OP and value not in (None, NO_OP[field]):
            raise ApiError(400, f"{field} is not supported by this server; leave it out or set it to "
                                f"{json.dumps(NO_OP[field])}", field, "unsupported_parameter")
        if field not in FIELDS and field not in NO_OP:
            raise ApiError(400, f"unrecognized request argument supplied: {field}", field, "unknown_parameter")
    model = data.get("model", model_id)
    if model != model_id:
        raise ApiError(404, f"the model {_short(model)} does not exist; this server serves {json.dumps(model_id)} "
                            "(GET /v1/models)", "model", "model_not_found")
    prompt = "" if data.get("prompt") is None else data["prompt"]
    prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt) if isinstance(prompt, list) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a non-empty list of strings (token-id prompts are not "
                            f"supported), got {_short(prompt)}", "prompt")
    n = _integer(data, "n", 1, max_choices, 1)
    if len(prompts) * n > max_choices:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} ask for {len(prompts) * n} choices; this server "
                            f"takes at most {max_choices} per request", "n" if n > 1 else "prompt")
    stream, options = _boolean(data, "stream"), data.get("stream_options")
    if options is not None and not (stream and isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise ApiError(400, 'stream_options must be {"include_usage": true|false}, and only with stream: true',
                       "stream_options")
    include_usage = _boolean(options or {}, "include_usage", "stream_options.include_usage")
    stop = data.get("stop")
    if not (stop is None or isinstance(stop, str) or isinstance(stop, list) and len(stop) <= MAX_STOP):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOP} strings, got {_short(stop)}", "stop")
    sampling = {field: data.get(field) for field in ("temperature", "top_p", "top_k", "stop", "seed")}
    for field, value in sampling.items():
        try:  # one field at a time, so that the runtime's own check names the field at fault
            generator.params(**{field: value})
        except RnnlmError as e:
            raise ApiError(400, str(e), field) from None
    limit = _integer(data, "max_tokens", 1, max_tokens, min(generator.defaults.max_new_tokens, max_tokens))
    return CompletionRequest(prompts, n, generator.params(max_new_tokens=limit, **sampling), stream, include_usage)


def start_sequences(request: CompletionRequest, generator: Generator, unknown: str,
                    max_prompt_tokens: int) -> list[Sequence]:
    """One Sequence per choice, in choice order; ApiError for a prompt the vocabulary or the limit refuses."""
    sequences = []
    for i, prompt in enumerate(request.prompts):
        where = "prompt" if len(request.prompts) == 1 else f"prompt[{i}]"
        for j in range(request.n):
            try:
                sequence = generator.start(prompt, request.choice_params(i * request.n + j), unknown)
            except RnnlmError as e:
                raise ApiError(400, f"{where}: {e}", "prompt") from None
            if len(sequence.prompt_ids) > max_prompt_tokens:
                raise ApiError(400, f"{where} is {len(sequence.prompt_ids)} tokens long; this server takes at most "
                                    f"{max_prompt_tokens}", "prompt", "context_length_exceeded")
            sequences.append(sequence)
    return sequences


# ----------------------------------------------------------------------------- responses


class Shapes:
    """The JSON a completion answers with: one body, or server-sent events of chunks."""

    def __init__(self, model_id: str, request: CompletionRequest, sequences: list[Sequence]) -> None:
        self.request, self.sequences = request, sequences
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": model_id}
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


def _integer(data: dict, field: str, low: int, high: int, default: int) -> int:
    value = data.get(field)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"{field} must be an integer from {low} to {high} (this server's limit), "
                            f"got {_short(value)}", field)
    return value


def _boolean(data: dict, field: str, name: str | None = None) -> bool:
    value = data.get(field)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{name or field} must be true or false, got {_short(value)}", name or field)
    return bool(value)


def _short(value) -> str:
    """A JSON value for a message, cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
