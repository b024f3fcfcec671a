"""The local stack for development, tests and demos: a Kafka-protocol broker (tansu), redis-server, a local S3
server, the demo, and ``segpipe up``. Never imported by the product (an import-linter contract says so); its
broker and S3 dependencies come with the ``dev`` extra, which ``scripts/setup.sh`` installs.
"""
