"""MCCP: the browser-facing JSON call-control protocol (pure codec and session) and its WSS server."""
