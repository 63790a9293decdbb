"""imagegate's benchmark harness: what the gateway adds to each request (see bench/README.md)."""
