# Persistence: the append-only record log (log.py), its upload cursor (cursor.py), record
# payload formats (records.py) and power-fail-safe register checkpoints (checkpoint.py).
