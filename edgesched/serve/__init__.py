"""Serving over ZeroMQ: wire frames, the ROUTER server, and the client library."""
