"""The pipeline stages behind the CLI: prepare, sample, train, predict, evaluate, export, maps."""
