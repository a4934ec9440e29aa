"""Software-defined assets, one module per group: data, training, evaluation, serving."""
