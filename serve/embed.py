"""Embedding an exported rnnlm model in another Python program: load once, generate on demand.

    python serve/embed.py export/char                      # a few demonstrations
    python serve/embed.py export/char --prompt "ROMEO:"    # answer your own prompts

The runtime needs numpy and onnxruntime (and sentencepiece for a subword model), never torch.
"""

import argparse
import sys

from rnnlm.errors import RnnlmError
from rnnlm.runtime import Generator


class Storyteller:
    """A part of some application that writes text on request. The model is loaded once, when the
    application starts; each request then costs only its own tokens."""

    def __init__(self, model_dir: str) -> None:
        self.generator = Generator.load(model_dir)  # checks the manifest and sha256, opens one session

    def write(self, prompt: str, length: int = 200, seed: int | None = None) -> str:
        # unknown="drop": a request with characters the model never saw is answered, not refused
        return self.generator.generate(prompt, max_new_tokens=length, temperature=0.8, seed=seed, unknown="drop")

    def write_live(self, prompt: str, length: int = 200) -> None:
        """Show the text as it is sampled, e.g. in a terminal or a chat window."""
        for piece in self.generator.stream(prompt, max_new_tokens=length, temperature=0.8, unknown="drop"):
            print(piece, end="", flush=True)
        print()

    def write_many(self, prompts: list[str], length: int = 100) -> list[str]:
        """Several requests sampled together, one step-function call per token for all of them."""
        return self.generator.generate_batch(prompts, max_new_tokens=length, temperature=0.8, seed=0,
                                             stop="\n\n", unknown="drop")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported folder, e.g. export/char (`make export`)")
    parser.add_argument("--prompt", action="append", help="a prompt to answer (repeatable)")
    args = parser.parse_args(argv)
    try:
        teller = Storyteller(args.model)
    except RnnlmError as e:
        sys.exit(f"error: {e}")
    if args.prompt:
        for prompt in args.prompt:
            print(prompt + teller.write(prompt))
        return
    print("--- one request, same seed twice: the same text ---")
    first, again = teller.write("ROMEO:", 80, seed=1), teller.write("ROMEO:", 80, seed=1)
    print("ROMEO:" + first, f"\n(identical: {first == again})")
    print("--- streamed ---")
    teller.write_live("JULIET:", 80)
    print("--- three requests in one batch, each up to a blank line ---")
    for prompt, text in zip(["KING:", "QUEEN:", ""], teller.write_many(["KING:", "QUEEN:", ""]), strict=True):
        print(f"{prompt}{text}\n")


if __name__ == "__main__":
    main()
