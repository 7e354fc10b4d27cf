"""EPIC as a service: ``epic-serve``, an OpenAI-compatible HTTP server with continuous batching.

``scheduler`` (the engine thread over ``batch.DecodeBatch``), ``app`` (the FastAPI routes),
``protocol`` (request bodies and the OpenAI error body), ``detok`` (incremental text and stop
strings), ``metrics`` (Prometheus), ``cli`` (the command). Needs the ``serve`` extra
(``pip install epic_kernels[serve]``); importing ``epic_kernels`` never does.
"""
