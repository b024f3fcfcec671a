"""Benchmarks of segpipe: what the pipeline costs on top of the model, batching, memory and wire size.

``python -m bench.run`` runs the throughput suite (see ``bench/README.md``); ``python -m bench.wire`` compares
Kafka compression codecs on real results. Nothing here is imported by the product.
"""
