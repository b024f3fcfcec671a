"""segpipe: a Kafka pipeline that segments images."""
