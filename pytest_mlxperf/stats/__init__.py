"""Numbers into verdicts: the metrics (unit, direction, tolerance), verdicts on repetitions and on
processes, identity differences, the machine speed canary."""
