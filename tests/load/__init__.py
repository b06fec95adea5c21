"""Browser load and fault harness for the hosted app (test tooling, not product): :mod:`tests.load.harness`."""
