"""`rnnlm sample` and `rnnlm eval`: an exported folder used from the terminal, through the runtime alone."""

import argparse
import sys
from pathlib import Path

from rnnlm.corpus import TRAIN_FRACTION
from rnnlm.errors import RnnlmError
from rnnlm.runtime.evaluate import bits_per_character
from rnnlm.runtime.generator import Generator


def sample_command(args: argparse.Namespace) -> None:
    """Print the prompt, then the new text as it is sampled."""
    generator = Generator.load(args.model, threads=args.threads)
    pieces = generator.stream(
        args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, stop=args.stop or (), seed=args.seed, unknown=args.unknown,
    )
    out = sys.stdout
    out.write(args.prompt)
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")


def eval_command(args: argparse.Namespace) -> None:
    """Print the bits per character of a text file under the exported model."""
    path = Path(args.text)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RnnlmError(f"text file {path} does not exist; give the path of a UTF-8 text file") from None
    except UnicodeDecodeError as e:
        raise RnnlmError(f"{path} is not UTF-8 text ({e}); give a UTF-8 text file") from None
    what = str(path)
    if args.val:
        text, what = text[int(TRAIN_FRACTION * len(text)):], f"the validation split of {path}"
    generator = Generator.load(args.model, threads=args.threads)
    score = bits_per_character(generator, text, unknown=args.unknown)
    quantization = generator.manifest.data["model"].get("quantization", "none")
    print(f"{args.model} ({quantization}) on {what}: {score.bpc:.4f} bits per character, "
          f"{score.nats / score.tokens:.4f} nats per token ({score.tokens} tokens, {score.chars} characters)")
