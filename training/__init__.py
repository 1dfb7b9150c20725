"""Training side of the lung image classifier: data, audit, split, model, training,
evaluation and the model bundle. Each module is a CLI: `python -m training.<module> --help`."""
