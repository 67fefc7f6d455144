"""Run every benchmark and write one report: `make bench`.

A benchmark is any `benchmarks/NAME.py` (other than this file and names starting with "_") whose
`main()` takes no argument and returns a markdown section: a `###` heading, then a table. The
benchmarks run in name order; the report puts the machine first (CPU model, cores, torch and its
threads, GPU if any, and the load average: other processes on the cores slow every number), is
printed, and is written to `benchmarks/results/<date>-<hostname>.md`.

    python benchmarks/run.py [NAME ...]     # only the named benchmarks, e.g. `generate`, written to
                                            # results/<date>-<hostname>-<NAME>.md
"""

import datetime
import importlib.util
import os
import platform
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks(names: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    unknown = set(names) - {p.stem for p in found}
    if unknown:
        known = ", ".join(p.stem for p in found)
        sys.exit(f"no benchmark named {', '.join(sorted(unknown))} in {HERE}; there are: {known}")
    return [p for p in found if not names or p.stem in names]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def machine() -> list[str]:
    lines = [f"- CPU: {cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
             f"- Python {platform.python_version()}; load average at the start: {load()}"]
    try:
        import torch
    except ImportError:
        return lines
    lines.append(f"- torch {torch.__version__}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return lines


def run(path: Path) -> str:
    spec = importlib.util.spec_from_file_location(f"benchmarks.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main()


def main(names: list[str]) -> None:
    paths, now = benchmarks(names), datetime.datetime.now()
    header = [f"## Benchmarks, {now:%Y-%m-%d %H:%M}, {socket.gethostname()}", "", *machine()]
    print("\n".join(header), flush=True)
    sections = []
    for path in paths:
        sections.append(run(path))
        print(f"\n{sections[-1]}", flush=True)
    part = "".join(f"-{name}" for name in names)  # a partial run does not overwrite the day's full report
    out = HERE / "results" / f"{now:%Y-%m-%d}-{socket.gethostname()}{part}.md"
    out.parent.mkdir(exist_ok=True)
    partial = out.with_suffix(".md.tmp")  # written whole, then moved: never a half report
    footer = f"Load average at the end: {load()}."
    print(f"\n{footer}")
    partial.write_text("\n\n".join(["\n".join(header), *sections, footer]) + "\n")
    partial.replace(out)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
