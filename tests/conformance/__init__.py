"""The official CQL conformance suite (vendored in `cql-tests/`) and the harness that runs it
through the project's translator and engines: development tooling, kept out of the package."""
