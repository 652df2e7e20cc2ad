"""What a measurement is and how it is taken: the ``LoadedModel`` interface and the records it
produces, workloads, the repetition protocol, timed callables, progress."""
