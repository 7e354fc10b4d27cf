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
    p.add_argument("--engine", choices=["auto", "fast", "reference", "vllm"], default="auto",
                   help="auto: the fast engine where it runs the model exactly, else the reference engine; "
                        "vllm: every model call through the vLLM server at --upstream")
    p.add_argument("--upstream", default=None, metavar="URL",
                   help="a running `vllm serve` (http://HOST:PORT/v1) for --engine vllm")
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
    args = p.parse_args(argv)
    if (args.engine == "vllm") != (args.upstream is not None):
        p.error("--engine vllm and --upstream URL go together (the vLLM server serves the model)")
    if args.upstream is not None and args.model is not None:
        p.error("--model picks the model of the in-process engine; the vLLM server at --upstream serves its own")
    return args


def _vllm_engine(args):
    """``(tokenizer, name, vocab, eos, make_batch, engine_check)`` for the vLLM server at ``--upstream``."""
    from ..serving import EpicServingDecoder, ServerTransport
    from ..serving.batch import ServingBatch

    transport = ServerTransport(args.upstream)
    info = transport.info

    def make_batch(s):
        return ServingBatch(EpicServingDecoder(transport, alpha=s.alpha, horizon=s.horizon, rollouts=s.rollouts,
                                               top_k=s.top_k, rollout_top_k=s.rollout_top_k))

    def engine_check(body):
        if body.top_p is not None:
            return "top_p", "the vLLM engine truncates candidates with top_k only"
        if body.epic_entropies:
            return "epic_entropies", "H(q) needs the full distribution, which the vLLM server does not return"
        for field in ("top_k", "epic_rollout_top_k"):
            k = getattr(body, field)
            if k is None or k > info.max_logprobs:     # (a server's limit may show only when a decoder probes it)
                return field, (f"the vLLM engine needs {field} <= the server's max_logprobs ({info.max_logprobs}); "
                               "full-vocabulary EPIC is out of scope there")
        return None

    return info.tokenizer, transport.model, info.vocab_size, list(info.eos_token_ids), make_batch, engine_check


def build(args):
    """``(app, scheduler)`` for parsed arguments: loads the model (or connects to the vLLM server),
    starts the engine thread."""
    import torch

    from ..models import eos_ids, load_model
    from ..validate import model_vocab, position_limit
    from .app import create_app
    from .metrics import Metrics
    from .scheduler import Scheduler

    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = Metrics()
    if args.engine == "vllm":
        tokenizer, name, vocab, eos, make_batch, engine_check = _vllm_engine(args)
        context = args.max_context or 2048
        scheduler = Scheduler(None, tokenizer, metrics=metrics, max_running=args.max_running, max_queue=args.max_queue,
                              max_context=context, eos=eos, shutdown_timeout=args.shutdown_timeout,
                              make_batch=make_batch)
        app = create_app(scheduler, tokenizer, args.served_model_name or name, vocab=vocab, max_context=context,
                         max_tokens=args.max_tokens, request_timeout=args.request_timeout, engine_check=engine_check)
        scheduler.start()
        return app, scheduler
    model, tokenizer = load_model(args.model)
    limit = position_limit(model)
    context = args.max_context or getattr(model.config, "max_position_embeddings", None) or 4096
    if limit is not None:                         # learned positions: the lookahead must fit too
        context = min(context, limit[0] - 16 - 2)
    if args.fault_after_position is not None:
        _inject_fault(model, args.fault_after_position)
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
