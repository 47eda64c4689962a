# Persistence: the append-only record log and its upload cursor (log.py), record
# payload formats (records.py) and power-fail-safe register checkpoints (checkpoint.py).
