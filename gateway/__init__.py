"""The HTTP gateway: the original synchronous API (POST /segment) over Kafka request-reply, for clients without Kafka.

An edge on top of the pipeline: it publishes with the client-side producer and reads its own reply topic; workers
never import it.
"""
