"""The server's counters, read out at GET /metrics in Prometheus' text format (version 0.0.4)."""

import bisect
from collections import Counter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)  # seconds


class Metrics:
    """Counts kept by the event loop's thread (no locks needed): requests by path and status, tokens,
    and a histogram of step latency (one batched step, timed on the worker thread)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.step_sequences = 0  # batch sizes summed over steps: / steps is the mean batch
        self.step_seconds = 0.0
        self.step_counts = [0] * (len(STEP_BUCKETS) + 1)  # per bucket, the last one +Inf

    def observe_steps(self, seconds: float, steps: int, batch_size: int, tokens: int) -> None:
        """steps batched steps of batch_size sequences that took seconds in all (each counted at their mean)."""
        self.step_counts[bisect.bisect_left(STEP_BUCKETS, seconds / steps)] += steps
        self.step_seconds += seconds
        self.step_sequences += batch_size * steps
        self.generated_tokens += tokens

    def render(self, active: int, queued: int) -> str:
        steps = sum(self.step_counts)
        lines = [*_header("rnnlm_requests_total", "counter", "HTTP requests answered, by path and status")]
        lines += [f'rnnlm_requests_total{{path="{path}",status="{status}"}} {count}'
                  for (path, status), count in sorted(self.requests.items())]
        lines += _sample("rnnlm_prompt_tokens_total", "counter", "prompt tokens admitted", self.prompt_tokens)
        lines += _sample("rnnlm_generated_tokens_total", "counter", "tokens sampled", self.generated_tokens)
        lines += _sample("rnnlm_active_sequences", "gauge", "sequences in the running batch", active)
        lines += _sample("rnnlm_queued_sequences", "gauge", "sequences waiting for a slot in the batch", queued)
        lines += _sample("rnnlm_step_sequences_total", "counter", "batch sizes summed over steps", self.step_sequences)
        lines += _header("rnnlm_step_seconds", "histogram", "latency of one batched step of the model")
        cumulative = 0
        for le, count in zip([*map(str, STEP_BUCKETS), "+Inf"], self.step_counts, strict=True):
            cumulative += count
            lines.append(f'rnnlm_step_seconds_bucket{{le="{le}"}} {cumulative}')
        lines += [f"rnnlm_step_seconds_sum {self.step_seconds:.6f}", f"rnnlm_step_seconds_count {steps}"]
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, help: str) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]


def _sample(name: str, kind: str, help: str, value: int) -> list[str]:
    return [*_header(name, kind, help), f"{name} {value}"]
