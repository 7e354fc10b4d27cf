"""``epic-serve``: EPIC decoding behind an OpenAI-compatible HTTP API (``pip install epic_kernels[serve]``).

    epic-serve                       # the embedded SmolLM2 on 127.0.0.1:8000, the fastest engine here
    epic-serve --model DIR_OR_GGUF --port 9000 --max-running 32

SIGTERM (or Ctrl-C) stops admitting requests (503), gives the running ones ``--shutdown-timeout``
seconds to finish, ends the rest with an error, and exits 0. Only the model given at start is
served; nothing a request sends names a file.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from ..extras import MissingDependency, check_installed
from ..cli.args import int_in, model_path, positive_float

log = logging.getLogger("epic_kernels.service")


def _inject_fault(model, position: int) -> None:
    """Testing aid (``--fault-after-position``): every model call after the prefill with a row at
    position >= ``position`` raises, as an engine fault inside a batched step would."""
    forward = model.forward

    def faulty(*args, **kwargs):
        ids, pos = kwargs.get("input_ids"), kwargs.get("position_ids")
        if ids is not None and pos is not None and ids.shape[-1] == 1 and int(pos.max()) >= position:
            raise RuntimeError(f"injected fault: a model call reached position {int(pos.max())} "
                               f"(--fault-after-position {position})")
        return forward(*args, **kwargs)

    model.forward = faulty


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="epic-serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_path, default=None,
                   help="a Hugging Face model directory or a .gguf file (default: the embedded SmolLM2)")
    p.add_argument("--served-model-name", default=None, help="the name clients send as `model` "
                   "(default: smollm2-135m-instruct for the embedded model, else the --model path)")
    p.add_argument("--engine", choices=["auto", "fast", "reference"], default="auto",
                   help="auto: the fast engine where it runs the model exactly, else the reference engine")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_in(0, 65535), default=8000)
    p.add_argument("--max-running", type=int_in(1), default=16, help="sequences decoding at once (the batch bound)")
    p.add_argument("--max-queue", type=int_in(0), default=64, help="requests waiting beyond those; more get 429")
    p.add_argument("--max-tokens", type=int_in(1), default=512, help="the most tokens one request may generate")
    p.add_argument("--max-context", type=int_in(2), default=None,
                   help="the most prompt + generated tokens of a request (default: the model's context)")
    p.add_argument("--request-timeout", type=positive_float, default=600.0,
                   help="seconds a request may take from arrival to its last token")
    p.add_argument("--shutdown-timeout", type=positive_float, default=30.0,
                   help="on SIGTERM, seconds running requests get to finish")
    p.add_argument("--threads", type=int_in(1), default=None, help="torch threads (default: torch's)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--fault-after-position", type=int_in(1), default=None, help=argparse.SUPPRESS)  # testing aid
    return p.parse_args(argv)


def build(args):
    """``(app, scheduler)`` for parsed arguments: loads the model, starts the engine thread."""
    import torch

    from ..models import eos_ids, load_model
    from ..validate import model_vocab, position_limit
    from .app import create_app
    from .metrics import Metrics
    from .scheduler import Scheduler

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    limit = position_limit(model)
    context = args.max_context or getattr(model.config, "max_position_embeddings", None) or 4096
    if limit is not None:                         # learned positions: the lookahead must fit too
        context = min(context, limit[0] - 16 - 2)
    if args.fault_after_position is not None:
        _inject_fault(model, args.fault_after_position)
    metrics = Metrics()
    scheduler = Scheduler(model, tokenizer, metrics=metrics, engine=args.engine, max_running=args.max_running,
                          max_queue=args.max_queue, max_context=context, eos=eos_ids(model, tokenizer),
                          shutdown_timeout=args.shutdown_timeout)
    name = args.served_model_name or (args.model or "smollm2-135m-instruct")
    app = create_app(scheduler, tokenizer, name, vocab=model_vocab(model), max_context=context,
                     max_tokens=args.max_tokens, request_timeout=args.request_timeout)
    scheduler.start()
    return app, scheduler


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_installed("fastapi", "uvicorn", "prometheus_client", extra="serve", purpose="epic-serve")
    except MissingDependency as err:
        print(f"epic-serve: {err}", file=sys.stderr)
        return 2
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    app, scheduler = build(args)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # drain instead of uvicorn's re-raise of the signal after shutdown: exit 0 when drained
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
                return
            log.info("signal %s: no new requests; running ones get %.0f s", sig, args.shutdown_timeout)
            scheduler.drain()
            self.should_exit = True

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout + 5, lifespan="off")
    server = Server(config)
    server.run()
    scheduler.drain(0)
    scheduler.join(10)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
