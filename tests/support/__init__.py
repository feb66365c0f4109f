"""Test helpers shared by the suites (the `fleet serve` harness lives in server.py)."""
