"""TRACE core: prompts, backbones, the reason-then-embed encoder, the candidate index, M-BEIR I/O and metrics.

Public API:
    encoder = trace_core.load_model("path/to/checkpoint")
    results = encoder.encode_queries([Query(text=..., instruction=...)], reasoning="auto")
    for event in encoder.stream_query(query): ...      # CotDelta ... then QueryResult
    decide_route(first_step_logits, emb_token_id, stop_token_ids, reasoning, routing_bias)  # -> FirstStep
    matrix = encoder.encode_candidates([Candidate(text=...), Candidate(image=...)])
"""

from .records import REASONING_MODES, Candidate, CotDelta, FirstStep, InputError, Query, QueryResult

# The encoder and the loader import torch (about 1.3 s): they are imported on first use, so that what needs only
# the records, M-BEIR I/O or the page (app.py serves its page before torch is imported) does not pay for it.
_LAZY = {"Encoder": "interface", "EncoderConfig": "interface", "TraceEncoder": "encoder", "decide_route": "routing",
         "ModelNotFoundError": "loading", "load_model": "loading"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REASONING_MODES",
    "Candidate",
    "CotDelta",
    "Encoder",
    "EncoderConfig",
    "FirstStep",
    "InputError",
    "ModelNotFoundError",
    "Query",
    "QueryResult",
    "TraceEncoder",
    "decide_route",
    "load_model",
]
