"""``python -m tui_chat.inference.build_package``: build a model's decode package (decode_package.py) in a process of
its own, as ``HFEngine`` asks when it compiles on CPU; the engine then loads the file.

Why a process of its own: exporting and compiling in the process that serves left its prompts encoding ~20% slower
for the rest of its life. This process loads the model exactly as the engine did (same spec and settings, so the
same weights and quantization), builds, checks the package against the eager step, and exits: 0 when the package is
in place, 1 with one line on stderr when it is not.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PACKAGE_BUILD_TIMEOUT_S = 1800  # a large model on a slow, busy machine; the bundled one takes ~1 minute
PARENT_POLL_S = 0.5  # how often the build checks that the process waiting for it is still there


def build_command(spec: str, models_dir: Path, out: Path, settings: dict[str, object]) -> list[str]:
    """The command line that builds ``spec``'s package into ``out``; ``settings``: the engine's device, dtype,
    quantize, threads and trust_remote_code."""
    command = [sys.executable, "-m", "tui_chat.inference.build_package", spec, str(models_dir), str(out),
               "--parent", str(os.getpid())]
    for name in ("device", "dtype", "quantize", "threads"):
        if settings.get(name) is not None:
            command += [f"--{name}", str(settings[name])]
    if settings.get("trust_remote_code"):
        command.append("--trust-remote-code")
    return command


def build_elsewhere(command: list[str]) -> None:
    """Run ``command`` (``build_command``) and wait; RuntimeError with its last line of stderr when it fails."""
    # A process group of its own, so that leaving takes the C++ compilers it started along (_leave_without).
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=PACKAGE_BUILD_TIMEOUT_S, start_new_session=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"the package build exited with status {result.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tui_chat.inference.build_package", description=__doc__)
    parser.add_argument("spec")
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--quantize")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--parent", type=int, help="leave when this process (the one waiting) is gone")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _leave_without(args.parent)

    import torch

    from trainer.models import error_line

    from tui_chat.inference import decode_package
    from tui_chat.inference.hf_engine import HFEngine

    try:
        engine = HFEngine(args.spec, args.models_dir, device=args.device, dtype=args.dtype, quantize=args.quantize,
                          threads=args.threads, trust_remote_code=args.trust_remote_code, compile=False)
        engine.load()
        decoder = engine.decoder
        if decoder.layout.buffer_shape is None:
            raise RuntimeError(f"{args.spec} does not decode over a KV buffer: it has no package")
        torch.set_num_threads(engine.decode_threads())  # the generated kernels keep the count they were built for
        decode_package.build_checked(decoder.model, decoder.layout.buffer_shape, args.out, decoder.eager_step)
    except Exception as exc:
        print(f"building the decode package failed: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _leave_without(parent: int) -> None:
    """Exit as soon as ``parent`` is no longer this process's parent (killed: a server killed mid-build, or a test's):
    a package nobody waits for is not worth a core for a minute. A later build removes the partial file."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        if os.getpgid(0) == os.getpid():  # a group of its own (build_elsewhere's): the compilers it started go too
            os.killpg(0, signal.SIGKILL)  # (left alone, they compiled on for ~40 s, slowing whatever ran next)
        os._exit(1)  # mid-export or mid-compile: a normal exit would wait for the build

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
