"""TRACE-mini corpus: a small M-BEIR-format benchmark with M-BEIR-CoT labels, built from open sources.

``sources`` reads the installed sources, ``teacher`` writes and filters chains of thought, ``build`` assembles
and writes the corpus (``python -m trace_core.minibeir.build --out assets/minibeir``).
"""
